"""Norm and activation factories: one place maps ArchConfig choices to torch modules."""

from __future__ import annotations

from torch import nn

from embzoo.config import ArchConfig

ACTIVATIONS = {  # ArchConfig.activation names (and "tanh", for classification heads) → module
    "tanh": lambda: nn.Tanh(),
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
}


def make_norm(cfg: ArchConfig, size: int = 0, layer: bool = False) -> nn.Module:
    """The configured norm over the last dim (size, 0 = hidden_size): LayerNorm (bias per norm_bias) or
    RMSNorm; layer=True forces a LayerNorm."""
    size = size or cfg.hidden_size
    if cfg.norm == "rms" and not layer:
        return nn.RMSNorm(size, eps=cfg.norm_eps)
    return nn.LayerNorm(size, eps=cfg.norm_eps, bias=cfg.norm_bias)


def make_activation(cfg: ArchConfig) -> nn.Module:
    return ACTIVATIONS[cfg.activation]()
