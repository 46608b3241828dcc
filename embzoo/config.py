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
Positions = Literal["absolute", "rope", "alibi"]
RopeScaling = Literal["none", "ntk_static", "ntk_dynamic"]

_CHOICES = {
    "activation": ("gelu", "gelu_tanh", "relu", "silu"),
    "positions": ("absolute", "rope", "alibi"),
    "rope_scaling": ("none", "ntk_static", "ntk_dynamic"),
    "norm": ("layer", "rms"),
    "norm_placement": ("post", "pre", "sandwich"),
    "qk_norm": ("none", "vector", "head"),
}
LAYER_TYPES = ("full", "local")


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
    num_kv_heads: int = 0  # key/value heads (grouped-query attention); 0 = num_heads
    # embeddings and positions
    type_vocab_size: int = 0  # 0 = no token-type table
    positions: Positions = "absolute"  # learned table | rotary on q/k | ALiBi bias
    max_positions: int = 512  # absolute: rows of the position table; rope/alibi: longest input accepted
    position_offset: int = 0  # first position id (RoBERTa/XLM-R: padding_idx + 1)
    position_pad_id: int | None = None  # RoBERTa/XLM-R: tokens of this id take position offset - 1 and are not counted
    embed_norm: bool = True  # norm right after the embedding sum
    embed_norm_layer: bool = False  # that norm is a LayerNorm even when `norm` is rms (GTE rms_norm)
    embed_scale: float = 1.0  # token embeddings × this, cast to the weight dtype first (Gemma: sqrt(hidden))
    # rotary (positions == "rope"): NeoX rotate-half on the first rotary_fraction of each head
    rope_theta: float = 10000.0
    rope_theta_local: float = 0.0  # theta on "local" layers; 0 = rope_theta
    rotary_fraction: float = 1.0
    rope_scaling: RopeScaling = "none"  # ntk_static: GTE; ntk_dynamic: NomicBert, per sequence
    rope_factor: float = 1.0
    rope_original_max: int = 0  # ntk_dynamic: sequences longer than this get an enlarged base
    # norms
    norm: Literal["layer", "rms"] = "layer"
    norm_eps: float = 1e-12
    norm_bias: bool = True
    norm_weight_offset: float = 0.0  # rms: x / rms(x) · (offset + w) in float32 (Gemma: 1)
    # post: h = norm(h + f(h)); pre: h = h + f(norm(h)); sandwich: h = h + norm_out(f(norm(h))) (Gemma2/3)
    norm_placement: Literal["post", "pre", "sandwich"] = "post"
    first_attn_norm: bool = True  # pre-norm: False = layer 0 has no attention norm (ModernBERT)
    final_norm: bool = False  # a norm after the last block
    attn_second_norm: bool = False  # post-norm: h = norm_attn2(h + norm_attn(h + attn(h))) (jina-v2-code)
    # attention
    causal: bool = False
    qkv_bias: bool = True
    out_bias: bool = True
    # norm on q and k after the projection: "vector" over all heads together (jina-v2-code), "head" over
    # each head's d dims (Qwen3, Gemma3); before rotary
    qk_norm: Literal["none", "vector", "head"] = "none"
    attn_scale: float = 0.0  # softmax scale; 0 = head_dim ** -0.5 (Gemma: query_pre_attn_scalar ** -0.5)
    attn_softcap: float = 0.0  # scores → c · tanh(scores / c) before the mask (Gemma2); 0 = off
    layer_types: tuple[str, ...] = ()  # "full" | "local" per layer; () = all full
    local_window: int = 0  # "local" layers: query i sees keys j with |i - j| <= local_window
    # mlp
    activation: Activation = "gelu"
    mlp_gated: bool = False  # up projects to [gate; up] (2 × intermediate): down(act(gate) * up)
    mlp_bias: bool = True
    mlp_up_bias: bool = True  # False: only the down projection has a bias (GTE, jina-v2 gated layers)
    # task LoRA (jina-embeddings-v3): stacked factors per task on every Linear and Embedding of the backbone,
    # W_t = W + delta_t · lora_alpha / lora_rank (see embzoo.modeling.task_lora); () = none
    lora_tasks: tuple[str, ...] = ()
    lora_rank: int = 0
    lora_alpha: float = 1.0

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise UnsupportedConfig(f"ArchConfig.{name}={getattr(self, name)!r}; allowed: {allowed}")
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "lora_tasks", tuple(self.lora_tasks))
        if self.num_layers < 1:
            raise UnsupportedConfig(f"num_layers must be >= 1, got {self.num_layers}")
        if self.lora_tasks and self.lora_rank < 1:
            raise UnsupportedConfig(f"lora_tasks {self.lora_tasks} need lora_rank >= 1, got {self.lora_rank}")
        if self.layer_types and (len(self.layer_types) != self.num_layers or set(self.layer_types) - set(LAYER_TYPES)):
            raise UnsupportedConfig(
                f"layer_types {self.layer_types} must name {self.num_layers} layers, each one of {LAYER_TYPES}"
            )
        if "local" in self.layer_types and self.local_window < 1:
            raise UnsupportedConfig("local layers need local_window >= 1 (the radius |i - j| they attend over)")
        if self.num_kv_heads == 0:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedConfig(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.norm_weight_offset and self.norm != "rms":
            raise UnsupportedConfig("norm_weight_offset applies to RMSNorm only (norm='rms')")
        if self.qk_norm == "head" and self.norm != "rms":
            raise UnsupportedConfig("qk_norm='head' (per-head q/k norms) is an RMSNorm: it needs norm='rms'")
        if self.head_dim == 0:
            if self.hidden_size % self.num_heads:
                raise UnsupportedConfig(
                    f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                    "set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.rope_scaling == "ntk_dynamic" and self.rope_original_max < 1:
            raise UnsupportedConfig("rope_scaling='ntk_dynamic' needs rope_original_max >= 1 (the trained length)")
        if self.attn_second_norm and self.norm_placement != "post":
            raise UnsupportedConfig("attn_second_norm needs norm_placement='post'")
        if self.positions == "rope" and self.rotary_dim % 2:
            raise UnsupportedConfig(f"rotary dims {self.rotary_dim} (head_dim × rotary_fraction) must be even")

    @property
    def rotary_dim(self) -> int:
        """Dims of each head that rotary rotates (the first ones)."""
        return int(self.head_dim * self.rotary_fraction)

    def layer_type(self, index: int) -> str:
        return self.layer_types[index] if self.layer_types else "full"

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
