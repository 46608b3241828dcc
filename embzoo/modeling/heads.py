"""Heads after the pooler: sentence-transformers Dense layers and sequence-classification heads."""

from __future__ import annotations

import torch
from torch import nn

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


class ClassificationHead(nn.Module):
    """Pooled [B, D] → logits [B, num_labels]: out(tanh(dense(x))) (BERT pooler+classifier, RoBERTa head)."""

    def __init__(self, hidden_size: int, num_labels: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.dense(x)))
