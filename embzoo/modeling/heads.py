"""Heads after the pooler: sentence-transformers Dense layers and sequence-classification heads."""

from __future__ import annotations

import torch
from torch import nn

from embzoo import kernels
from embzoo.modeling.batch import TokenRows
from embzoo.modeling.layers import ACTIVATIONS

# sentence-transformers Dense "activation_function" class name → module
DENSE_ACTIVATIONS = {
    "Identity": nn.Identity,
    "Tanh": nn.Tanh,
    "ReLU": nn.ReLU,
    "GELU": nn.GELU,
    "Sigmoid": nn.Sigmoid,
    "SiLU": nn.SiLU,
}


def dense_activation(name: str | None) -> nn.Module:
    """Resolve a Dense config's activation ("torch.nn.modules.activation.Tanh", None = Identity)."""
    if name is None:
        return nn.Identity()
    short = name.rsplit(".", 1)[-1]
    if short not in DENSE_ACTIVATIONS:
        raise ValueError(f"unsupported Dense activation {name!r}; supported: {sorted(DENSE_ACTIVATIONS)}")
    return DENSE_ACTIVATIONS[short]()


class Dense(nn.Module):
    """y = act(linear(x)); weights named linear.weight / linear.bias as in sentence-transformers."""

    def __init__(self, in_features: int, out_features: int, bias: bool, activation: nn.Module):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.act = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x.to(self.linear.weight.dtype)))


# how a head's input is pooled from token states → embzoo.kernels.segment_pool mode
HEAD_POOLING = {"cls": "first", "mean": "mean"}


class ClassificationHead(nn.Module):
    """Pooled [B, D] → logits [B, num_labels]: out(norm(act(dense(x)))).

    The defaults are BERT's pooler + classifier and RoBERTa's head: tanh, dense bias, no norm, CLS
    pooling. ModernBERT: GELU, a LayerNorm after it, dense bias optional, cls or mean pooling. A family
    gives the options through its `head_config(hf)`; `pooling` is kept for pool().
    """

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        *,
        activation: str = "tanh",
        dense_bias: bool = True,
        norm: bool = False,
        norm_eps: float = 1e-5,
        norm_bias: bool = True,
        pooling: str = "cls",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"head activation {activation!r}; supported: {sorted(ACTIVATIONS)}")
        if pooling not in HEAD_POOLING:
            raise ValueError(f"head pooling {pooling!r}; supported: {sorted(HEAD_POOLING)}")
        self.pooling = pooling
        self.dense = nn.Linear(hidden_size, hidden_size, bias=dense_bias)
        self.act = ACTIVATIONS[activation]()
        self.norm = nn.LayerNorm(hidden_size, eps=norm_eps, bias=norm_bias) if norm else nn.Identity()
        self.out = nn.Linear(hidden_size, num_labels)

    def token_rows(self, cu_seqlens: torch.Tensor) -> TokenRows | None:
        """Each sequence's first token for "cls" (whose states are then this head's input), None for "mean"."""
        return TokenRows.ends(cu_seqlens, ["first"]) if self.pooling == "cls" else None

    def pool(self, hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """Packed token states [T, D] → this head's input, fp32 [B, D]: each sequence's first token
        ("cls") or the mean of its tokens ("mean")."""
        return kernels.segment_pool(hidden, cu_seqlens, HEAD_POOLING[self.pooling])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.act(self.dense(x.to(self.dense.weight.dtype)))))
