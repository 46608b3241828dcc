"""Multi-vector (late-interaction) head: packed token states → one L2-normalized vector per kept token.

ColBERT (PyLate and Stanford layouts) projects every token with a bias-free Dense layer; BGE-M3 projects with
colbert_linear (with bias) and leaves each sequence's first token (CLS) out. Which other tokens are kept (a
document's punctuation skiplist) is the caller's `keep` mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from embzoo.modeling.batch import PackedBatch
from embzoo.modeling.heads import Dense


class MultiVectorHead(nn.Module):
    """Token states [T, D] → (vectors float32 [T', dim], tokens kept per sequence int64 [B]). `reduce`: how the
    model's MaxSim score combines its query tokens ("sum": ColBERT, "mean": BGE-M3; see embzoo.scoring)."""

    def __init__(self, projection: Sequence[Dense], skip_first: bool = False, reduce: str = "sum"):
        super().__init__()
        self.projection = nn.ModuleList(projection)
        self.skip_first = skip_first
        self.reduce = reduce

    @property
    def dimension(self) -> int:
        return self.projection[-1].linear.out_features

    def forward(
        self, h: torch.Tensor, batch: PackedBatch, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """keep bool [T]: tokens to return (None: all); the first token of each sequence is dropped when skip_first."""
        cu = batch.cu_seqlens.long()
        if self.skip_first:
            keep = torch.ones(h.shape[0], dtype=torch.bool, device=h.device) if keep is None else keep.clone()
            keep[cu[:-1][cu[:-1] < cu[1:]]] = False
        if keep is not None:
            seq = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=h.device), cu[1:] - cu[:-1])
            lengths = torch.zeros(cu.numel() - 1, dtype=torch.int64, device=h.device).index_add_(0, seq, keep.long())
            h = h[keep]
        else:
            lengths = cu[1:] - cu[:-1]
        x = h
        for layer in self.projection:
            x = layer(x)
        return F.normalize(x.float(), p=2, dim=-1), lengths
