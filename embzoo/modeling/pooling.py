"""Pooler: token states [T, D] → one vector per sequence, sentence-transformers' modes exactly.

Every pooler (this one, latent_attention.LatentAttentionPooler) offers what EmbeddingModel and Embedder
use: forward(h, cu_seqlens, prompt_lengths), token_rows(cu_seqlens, prompt_lengths), output_dim(hidden_size),
include_prompt and name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from embzoo import kernels
from embzoo.modeling.batch import TokenRows

# sentence-transformers mode name → segment_pool kernel mode
POOLING_MODES = {
    "cls": "first",
    "mean": "mean",
    "max": "max",
    "lasttoken": "last",
    "weightedmean": "weighted_mean",
    "mean_sqrt_len_tokens": "mean",
}


class Pooler(nn.Module):
    """Concatenates the pools of `modes` (in order). Output float32 [B, len(modes) * D]."""

    def __init__(self, modes: Sequence[str], include_prompt: bool = True):
        super().__init__()
        unknown = [m for m in modes if m not in POOLING_MODES]
        if unknown or not modes:
            raise ValueError(f"unknown pooling modes {unknown or modes}; allowed: {sorted(POOLING_MODES)}")
        self.modes = tuple(modes)
        self.include_prompt = include_prompt

    @property
    def name(self) -> str:
        """The modes joined by "+" ("mean", "cls+max")."""
        return "+".join(self.modes)

    def output_dim(self, hidden_size: int) -> int:
        """Width of the pooled vector: one hidden-size block per mode."""
        return hidden_size * len(self.modes)

    def token_rows(self, cu_seqlens: torch.Tensor, prompt_lengths: torch.Tensor | None = None) -> TokenRows | None:
        """The tokens the modes read when each reads one ("cls", "lasttoken"; pool_rows pools their states), else
        None."""
        if not set(self.modes) <= {"cls", "lasttoken"}:
            return None
        skip = None if self.include_prompt else prompt_lengths
        return TokenRows.ends(cu_seqlens, [POOLING_MODES[m] for m in self.modes], skip)

    def pool_rows(self, h: torch.Tensor, rows: TokenRows) -> torch.Tensor:
        """The states [B * len(modes), D] of token_rows' rows → float32 [B, len(modes) * D], as forward pools."""
        return h.float().view(-1, rows.per_sequence * h.shape[1])

    def forward(
        self, h: torch.Tensor, cu_seqlens: torch.Tensor, prompt_lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """prompt_lengths int32 [B]: leading tokens excluded when include_prompt is False."""
        skip = None if self.include_prompt else prompt_lengths
        out = []
        for mode in self.modes:
            pooled = kernels.segment_pool(h, cu_seqlens, POOLING_MODES[mode], skip)
            if mode == "mean_sqrt_len_tokens":
                n = (cu_seqlens[1:] - cu_seqlens[:-1]).float()
                if skip is not None:
                    n = n - skip.float()
                pooled = pooled * n.clamp(min=0).sqrt().unsqueeze(1)
            out.append(pooled)
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)
