"""The scorer of a listwise reranker (jina-reranker-v3): its backbone, the hidden states at the marker tokens,
and the projector MLP that maps them into the space where query and documents are compared by cosine."""

from __future__ import annotations

import torch
from torch import nn

from embzoo.modeling.backbone import Backbone
from embzoo.modeling.batch import PackedBatch, TokenRows


def projector(hidden_size: int, inner_size: int, out_size: int) -> nn.Sequential:
    """Linear(hidden→inner, no bias) → ReLU → Linear(inner→out, no bias); weights named 0.weight / 2.weight."""
    return nn.Sequential(
        nn.Linear(hidden_size, inner_size, bias=False), nn.ReLU(), nn.Linear(inner_size, out_size, bias=False)
    )


class MarkerProjector(nn.Module):
    """PackedBatch + the marker rows → (queries fp32 [Q, P], documents fp32 [N, P]): the projected final-normed
    states at every `query_id` and every `doc_id` token, in stream order (each sequence's markers after the
    previous one's). The rows come from the host-side ids (`marker_rows`), so the forward never syncs; the last
    layer computes the marker tokens only. The projector runs in float32."""

    def __init__(self, backbone: Backbone, head: nn.Sequential, query_id: int, doc_id: int):
        super().__init__()
        self.backbone = backbone
        self.projector = head.float()
        self.query_id, self.doc_id = query_id, doc_id

    def marker_rows(self, batch: PackedBatch) -> tuple[TokenRows, torch.Tensor, torch.Tensor]:
        """From a host-side batch: every marker token's row in stream order, and which of those rows (int64 [Q],
        [N] positions among them) are the query markers and the document markers."""
        ids = batch.input_ids
        index = ((ids == self.query_id) | (ids == self.doc_id)).nonzero()[:, 0]
        seq = torch.searchsorted(batch.cu_seqlens[1:].long(), index, right=True)
        per_sequence = int(torch.bincount(seq).max()) if index.numel() else 0
        is_query = ids[index] == self.query_id
        return TokenRows(index, seq, per_sequence), is_query.nonzero()[:, 0], (~is_query).nonzero()[:, 0]

    def forward(
        self, batch: PackedBatch, rows: TokenRows, query_at: torch.Tensor, doc_at: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """rows, query_at, doc_at: marker_rows(batch) on the batch's device."""
        hidden = self.backbone(batch, rows).float()
        return self.projector(hidden[query_at]), self.projector(hidden[doc_at])
