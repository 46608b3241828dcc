"""Norm and activation factories: one place maps ArchConfig choices to torch modules."""

from __future__ import annotations

from torch import nn

from embzoo.config import ArchConfig

ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
}


def make_norm(cfg: ArchConfig) -> nn.Module:
    """The configured norm over the last dim (hidden_size): LayerNorm (optionally without bias) or RMSNorm."""
    if cfg.norm == "rms":
        return nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)


def make_activation(cfg: ArchConfig) -> nn.Module:
    return ACTIVATIONS[cfg.activation]()
