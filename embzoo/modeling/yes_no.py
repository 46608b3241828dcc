"""The scorer of a generative yes/no reranker: its backbone and the one score row its LM head was reduced to
(see embzoo.conversion.score_row)."""

from __future__ import annotations

import torch
from torch import nn

from embzoo.modeling.backbone import Backbone
from embzoo.modeling.batch import PackedBatch, TokenRows


class ScoreRowScorer(nn.Module):
    """PackedBatch → float32 [B]: each sequence's final-normed last-token state · the score row (fp32 [D]),
    i.e. the logit difference the reference reads from its full-vocabulary head at the last position. The last
    layer computes the last tokens only."""

    def __init__(self, backbone: Backbone, row: torch.Tensor):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("row", row.detach().float())

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        last = self.backbone(batch, TokenRows.ends(batch.cu_seqlens, ["last"]))  # [B, D]
        return last.float() @ self.row.float()
