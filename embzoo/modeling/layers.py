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
    """LayerNorm over the last dim (hidden_size)."""
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)


def make_activation(cfg: ArchConfig) -> nn.Module:
    return ACTIVATIONS[cfg.activation]()
