"""Norm and activation factories: one place maps ArchConfig choices to torch modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embzoo.config import ArchConfig

ACTIVATIONS = {  # ArchConfig.activation names (and "tanh", for classification heads) → module
    "tanh": lambda: nn.Tanh(),
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
}


class OffsetRMSNorm(nn.Module):
    """x / rms(x) · (offset + w), all in float32, returned in x's dtype (Gemma's RMSNorm: offset 1)."""

    def __init__(self, size: int, eps: float, offset: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size))
        self.eps = eps
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return (y * (self.offset + self.weight.float())).to(x.dtype)


def make_norm(cfg: ArchConfig, size: int = 0, layer: bool = False) -> nn.Module:
    """The configured norm over the last dim (size, 0 = hidden_size): LayerNorm (bias per norm_bias) or
    RMSNorm (with norm_weight_offset, OffsetRMSNorm); layer=True forces a LayerNorm."""
    size = size or cfg.hidden_size
    if cfg.norm == "rms" and not layer:
        if cfg.norm_weight_offset:
            return OffsetRMSNorm(size, cfg.norm_eps, cfg.norm_weight_offset)
        return nn.RMSNorm(size, eps=cfg.norm_eps)
    return nn.LayerNorm(size, eps=cfg.norm_eps, bias=cfg.norm_bias)


def make_activation(cfg: ArchConfig) -> nn.Module:
    return ACTIVATIONS[cfg.activation]()
