"""ArchConfig: the one description of every architecture (DESIGN §3).

Fields name behaviours, never families. A family's converter translates its config.json into an
ArchConfig; the model in `embzoo.modeling` reads nothing else. New behaviours get a new field whose
default changes nothing for the families that don't use it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]

_CHOICES = {
    "activation": ("gelu", "gelu_tanh", "relu", "silu"),
}


class UnsupportedConfig(ValueError):
    """A checkpoint config asks for a variant embzoo does not implement."""


@dataclass(frozen=True)
class ArchConfig:
    """Architecture of a packed encoder/decoder backbone. Sizes in elements; eps is absolute."""

    # sizes
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    head_dim: int = 0  # 0 = hidden_size // num_heads
    # embeddings
    type_vocab_size: int = 0  # 0 = no token-type table
    max_positions: int = 512  # rows of the learned absolute-position table
    position_offset: int = 0  # first position id (RoBERTa/XLM-R: padding_idx + 1)
    embed_norm: bool = True  # norm right after the embedding sum
    # norms
    norm_eps: float = 1e-12
    # attention
    causal: bool = False
    qkv_bias: bool = True
    out_bias: bool = True
    # mlp
    activation: Activation = "gelu"
    mlp_bias: bool = True

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise UnsupportedConfig(f"ArchConfig.{name}={getattr(self, name)!r}; allowed: {allowed}")
        if self.head_dim == 0:
            if self.hidden_size % self.num_heads:
                raise UnsupportedConfig(
                    f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                    "set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UnsupportedConfig(f"unknown ArchConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        return cls.from_dict(json.loads(text))
