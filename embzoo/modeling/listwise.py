"""The scorer of a listwise reranker (jina-reranker-v3): its backbone, the hidden states at the marker tokens,
and the projector MLP that maps them into the space where query and documents are compared by cosine."""

from __future__ import annotations

import torch
from torch import nn

from embzoo.modeling.backbone import Backbone
from embzoo.modeling.batch import PackedBatch


def projector(hidden_size: int, inner_size: int, out_size: int) -> nn.Sequential:
    """Linear(hidden→inner, no bias) → ReLU → Linear(inner→out, no bias); weights named 0.weight / 2.weight."""
    return nn.Sequential(
        nn.Linear(hidden_size, inner_size, bias=False), nn.ReLU(), nn.Linear(inner_size, out_size, bias=False)
    )


class MarkerProjector(nn.Module):
    """PackedBatch + the marker rows → (queries fp32 [Q, P], documents fp32 [N, P]): the projected final-normed
    states at every `query_id` and every `doc_id` token, in stream order (each sequence's markers after the
    previous one's). The rows come from the host-side ids (`marker_rows`), so the forward never syncs.
    The projector runs in float32."""

    def __init__(self, backbone: Backbone, head: nn.Sequential, query_id: int, doc_id: int):
        super().__init__()
        self.backbone = backbone
        self.projector = head.float()
        self.query_id, self.doc_id = query_id, doc_id

    def marker_rows(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stream positions int64 [Q], [N] of the query and document markers in a batch's (host) input ids."""
        return (input_ids == self.query_id).nonzero()[:, 0], (input_ids == self.doc_id).nonzero()[:, 0]

    def forward(
        self, batch: PackedBatch, query_rows: torch.Tensor, doc_rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.backbone(batch)
        return self.projector(hidden[query_rows].float()), self.projector(hidden[doc_rows].float())
