"""Multi-vector (late-interaction) head: packed token states → one L2-normalized vector per kept token.

ColBERT (PyLate and Stanford layouts) projects every token with a bias-free Dense layer; BGE-M3 projects with
colbert_linear (with bias) and leaves each sequence's first token (CLS) out. Which other tokens are kept (a
document's punctuation skiplist) is the caller's `keep` mask; `rows` turns it into row indices on the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embzoo.modeling.heads import Dense


class MultiVectorHead(nn.Module):
    """Token states [T, D] → float32 [T', dim] vectors of the kept tokens (see rows). `reduce`: how the model's
    MaxSim score combines its query tokens ("sum": ColBERT, "mean": BGE-M3; see embzoo.scoring)."""

    def __init__(self, projection: Sequence[Dense], skip_first: bool = False, reduce: str = "sum"):
        super().__init__()
        self.projection = nn.ModuleList(projection)
        self.skip_first = skip_first
        self.reduce = reduce

    @property
    def dimension(self) -> int:
        return self.projection[-1].linear.out_features

    def rows(self, lengths: Sequence[int], keep: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, list[int]]:
        """Host side, no device sync: the packed rows whose vectors a batch returns (int64 [T']) and how many per
        sequence; keep: bool [len_i] per sequence (None: all), and the first token left out when skip_first."""
        masks = [np.ones(n, dtype=bool) for n in lengths] if keep is None else [k.copy() for k in keep]
        if self.skip_first:
            for m in masks:
                m[:1] = False
        flat = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
        return np.flatnonzero(flat), [int(m.sum()) for m in masks]

    def forward(self, h: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """h [T, D] → float32 [T', dim]: the rows (int64 [T'], from `rows`; None: every token) projected and
        L2-normalized."""
        x = h if rows is None else h.index_select(0, rows)
        for layer in self.projection:
            x = layer(x)
        return F.normalize(x.float(), p=2, dim=-1)
