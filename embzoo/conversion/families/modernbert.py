"""ModernBERT: rotary positions, pre-norm, gated GELU MLP, alternating global and local attention.

Quirks and the fields that encode them:
- Pre-norm blocks with a norm after the embeddings and after the last block → `norm_placement="pre"`,
  `embed_norm=True`, `final_norm=True`. Layer 0 has no attention norm (nn.Identity) → `first_attn_norm=False`.
- No biases by default: config `norm_bias`, `attention_bias`, `mlp_bias` → `norm_bias`, `qkv_bias` and
  `out_bias`, `mlp_bias`. LayerNorm eps is `norm_eps`.
- Attention pattern: `layer_types` ("full_attention" | "sliding_attention", newer configs) or the legacy
  `global_attn_every_n_layers` n (layer i is global iff i % n == 0) → `layer_types` "full" | "local".
- `local_attention` is the total window width: local layers attend where |i - j| <= local_attention // 2
  → `local_window`.
- One rotary theta per layer type: `rope_parameters` {"full_attention": {"rope_theta"}, "sliding_attention":
  {...}} (newer configs) or `global_rope_theta` / `local_rope_theta` (legacy; a null local theta means the
  global one) → `rope_theta` / `rope_theta_local`. Only unscaled ("default") rotary is supported.
- mlp.Wi [2I, D] = [activation input; gate] and out = Wo(act(input) * gate): the activated half comes
  first, which is embzoo's [gate; up] order as stored → `mlp_gated=True`, no reorder.
- Sequence-classification head (`head_config`): pool ("cls" or masked "mean", config `classifier_pooling`)
  on the final_norm output → head.dense (bias = `classifier_bias`) → `classifier_activation` → head.norm
  (LayerNorm with `norm_eps`, `norm_bias`) → classifier (always with bias). Becomes head.{dense,norm,out}.
- ModernBertForMaskedLM checkpoints (answerdotai/ModernBERT-*) carry head.{dense,norm} and decoder.*:
  loaded as an embedder, the head is dropped with the classification head's rules and decoder.* by WEIGHTS.
"""

from __future__ import annotations

from typing import Any

from embzoo.config import ArchConfig, UnsupportedConfig
from embzoo.conversion.config_values import HF_ACTIVATIONS, choice, flag, sizes
from embzoo.conversion.rules import Drop, Rule

MODEL_TYPES = ("modernbert",)

# transformers ACT2FN names → ArchConfig.activation (MLP) / ClassificationHead activation
HEAD_ACTIVATIONS = HF_ACTIVATIONS | {"tanh": "tanh"}
LAYER_TYPES = {"full_attention": "full", "sliding_attention": "local"}
DEFAULT_THETA = {"full_attention": 160_000.0, "sliding_attention": 10_000.0}
LEGACY_THETA = {"full_attention": "global_rope_theta", "sliding_attention": "local_rope_theta"}


def to_arch(hf: dict[str, Any]) -> ArchConfig:
    """config.json of a ModernBERT checkpoint → ArchConfig."""
    activation = choice(hf, "hidden_activation", "gelu", HF_ACTIVATIONS, "modernbert")
    n = hf["num_hidden_layers"]
    types = _layer_types(hf, n)
    thetas = _rope_thetas(hf)
    attention_bias = flag(hf, "attention_bias", False)
    return ArchConfig(
        **sizes(hf),
        type_vocab_size=0,
        positions="rope",
        max_positions=hf.get("max_position_embeddings", 8192),
        embed_norm=True,
        rope_theta=thetas["full_attention"],
        rope_theta_local=thetas["sliding_attention"],
        norm_eps=hf.get("norm_eps", 1e-5),
        norm_bias=flag(hf, "norm_bias", False),
        norm_placement="pre",
        first_attn_norm=False,
        final_norm=True,
        qkv_bias=attention_bias,
        out_bias=attention_bias,
        layer_types=types,
        local_window=hf.get("local_attention", 128) // 2 if "local" in types else 0,
        activation=activation,
        mlp_gated=True,
        mlp_bias=flag(hf, "mlp_bias", False),
    )


def _layer_types(hf: dict[str, Any], n: int) -> tuple[str, ...]:
    """Per-layer "full" | "local": `layer_types` when given, else global iff i % global_attn_every_n_layers == 0."""
    names = hf.get("layer_types")
    if names is None:
        every = hf.get("global_attn_every_n_layers", 3)
        if not isinstance(every, int) or every < 1:
            raise UnsupportedConfig(f"modernbert: global_attn_every_n_layers {every!r} must be a positive integer")
        return tuple("full" if i % every == 0 else "local" for i in range(n))
    unknown = sorted(set(names) - set(LAYER_TYPES))
    if unknown or len(names) != n:
        raise UnsupportedConfig(
            f"modernbert: layer_types {names} must name {n} layers, each one of {sorted(LAYER_TYPES)}"
        )
    return tuple(LAYER_TYPES[t] for t in names)


def _rope_thetas(hf: dict[str, Any]) -> dict[str, float]:
    """Rotary theta per layer type, from `rope_parameters` or the legacy global/local_rope_theta keys."""
    if hf.get("rope_scaling") is not None:
        raise UnsupportedConfig(f"modernbert: rope_scaling {hf['rope_scaling']!r}; only unscaled rotary is supported")
    params = hf.get("rope_parameters") or {}
    if not isinstance(params, dict) or set(params) - set(LAYER_TYPES):
        raise UnsupportedConfig(
            f"modernbert: rope_parameters {params!r} must be keyed by layer type {sorted(LAYER_TYPES)}"
        )
    thetas = {}
    for kind in LAYER_TYPES:
        p = params.get(kind) or {}
        rope_type = p.get("rope_type", p.get("type", "default"))
        if rope_type != "default":
            raise UnsupportedConfig(f"modernbert: {kind} rope_type {rope_type!r}; only 'default' is supported")
        theta = p.get("rope_theta", hf.get(LEGACY_THETA[kind], DEFAULT_THETA[kind]))
        thetas[kind] = float(theta) if theta is not None else 0.0  # 0: a null local theta means the global one
    if not thetas["full_attention"]:
        raise UnsupportedConfig("modernbert: the global rope theta is null")
    return thetas


def head_config(hf: dict[str, Any]) -> dict[str, Any]:
    """ClassificationHead options of ModernBertForSequenceClassification (see the module docstring)."""
    activation = choice(hf, "classifier_activation", "gelu", HEAD_ACTIVATIONS, "modernbert")
    pooling = hf.get("classifier_pooling", "cls")
    if pooling not in ("cls", "mean"):
        raise UnsupportedConfig(f"modernbert: classifier_pooling {pooling!r}; supported: 'cls', 'mean'")
    return dict(
        activation=activation,
        dense_bias=flag(hf, "classifier_bias", False),
        norm=True,
        norm_eps=hf.get("norm_eps", 1e-5),
        norm_bias=flag(hf, "norm_bias", False),
        pooling=pooling,
    )


P = r"^(?:model\.)?"
L = P + r"layers\.(?P<i>\d+)\."
WB = r"\.(?P<p>weight|bias)$"

WEIGHTS = [
    Rule(P + r"embeddings\.tok_embeddings\.weight$", "embed.tok.weight"),
    Rule(P + r"embeddings\.norm" + WB, "embed.norm.{p}"),
    Rule(L + r"attn_norm" + WB, "layers.{i}.norm_attn.{p}"),  # absent for layer 0
    Rule(L + r"attn\.Wqkv" + WB, "layers.{i}.attn.qkv.{p}"),  # rows [Q; K; V], as embzoo's
    Rule(L + r"attn\.Wo" + WB, "layers.{i}.attn.out.{p}"),
    Rule(L + r"mlp_norm" + WB, "layers.{i}.norm_mlp.{p}"),
    Rule(L + r"mlp\.Wi" + WB, "layers.{i}.mlp.up.{p}"),  # rows [activation input; gate] = embzoo's [gate; up]
    Rule(L + r"mlp\.Wo" + WB, "layers.{i}.mlp.down.{p}"),
    Rule(P + r"final_norm" + WB, "final_norm.{p}"),
    Drop(r"^decoder\."),  # masked-LM decoder of pre-training checkpoints (its head.* goes with HEADS)
]

# sequence-classification head; absent heads (and a masked-LM head.dense/head.norm) are dropped
HEADS = {
    "modernbert": [
        Rule(r"^head\.dense" + WB, "head.dense.{p}"),
        Rule(r"^head\.norm" + WB, "head.norm.{p}"),
        Rule(r"^classifier" + WB, "head.out.{p}"),
    ],
}
