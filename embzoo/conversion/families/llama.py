"""Llama-layout decoders: Llama, Mistral, Qwen2, Qwen3 (and the embedders built on them: Qwen3-Embedding,
gte-Qwen2, e5-mistral, SFR-Embedding-Mistral, LLM2Vec).

Quirks and the fields that encode them:
- Pre-norm RMSNorm blocks, no embedding norm, a final norm → `norm="rms"`, `norm_placement="pre"`,
  `embed_norm=False`, `final_norm=True`; eps is `rms_norm_eps`. post_attention_layernorm is the norm
  before the MLP (→ `norm_mlp`).
- Grouped-query attention: `num_key_value_heads` → `num_kv_heads`; `head_dim` may differ from
  hidden/heads (Qwen3) → `head_dim`. q/k/v_proj fuse into `attn.qkv` in the order q, k, v.
- Biases: Qwen2 on q/k/v only → `qkv_bias`; Llama/Qwen3 `attention_bias` on q/k/v and o_proj →
  `qkv_bias`, `out_bias`; Llama `mlp_bias`; Mistral none (MistralModel ignores both keys). Qwen3 adds an
  RMSNorm over each head's dims on q and k before rotary (self_attn.q_norm / k_norm) → `qk_norm="head"`.
- SwiGLU: down(SiLU(gate) · up) → `mlp_gated`, gate_proj / up_proj fused in that order.
- Rotary: NeoX rotate-half over the whole head, theta `rope_theta` (or `rope_parameters.rope_theta`,
  transformers ≥ 5); only unscaled rotary is supported.
- Causal by default. config `is_causal: false` makes attention bidirectional (gte-Qwen2 and LLM2Vec
  models are trained that way; the catalog sets it for checkpoints whose config.json does not say so).
- Sliding windows (causal only), as transformers' models apply them: Mistral `sliding_window` W on every
  layer (MistralModel ignores `layer_types`); Qwen2/Qwen3 only with `use_sliding_window`, on the layers an
  explicit `layer_types` list names "sliding_attention", else on layers i >= `max_window_layers`; Llama
  never. Query i sees keys i-W+1..i → `local_window=W-1`. Bidirectional models run without a window, as
  the bidirectional references (LLM2Vec, NV-Embed, gte-Qwen2) do (transformers 5 itself would give an
  `is_causal: false` model's sliding layers the window |i - j| <= W).
- Weight names: *Model checkpoints have none of the prefix, *ForCausalLM ones "model." and an lm_head
  (tied or not, unused by an embedder: dropped).
"""

from __future__ import annotations

from typing import Any

from embzoo.config import ArchConfig, UnsupportedConfig
from embzoo.conversion.config_values import HF_ACTIVATIONS, choice, flag, sizes
from embzoo.conversion.rules import Drop, Rule

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
NEEDS_RECIPE = True  # decoder embedders: prompts, end token and attention direction live in the catalog
LAYER_TYPES = {"full_attention": "full", "sliding_attention": "local"}


def to_arch(hf: dict[str, Any]) -> ArchConfig:
    """config.json of a Llama/Mistral/Qwen2/Qwen3 checkpoint → ArchConfig."""
    kind = hf["model_type"]
    causal = flag(hf, "is_causal", True)
    attention_bias = kind in ("llama", "qwen3") and flag(hf, "attention_bias", False)
    types = layer_types(hf) if causal else ()
    return ArchConfig(
        **sizes(hf),
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or 0,
        type_vocab_size=0,
        positions="rope",
        max_positions=hf.get("max_position_embeddings", 32768),
        embed_norm=False,
        rope_theta=rope_theta(hf),
        norm="rms",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        norm_placement="pre",
        final_norm=True,
        causal=causal,
        qkv_bias=kind == "qwen2" or attention_bias,
        out_bias=attention_bias,
        qk_norm="head" if kind == "qwen3" else "none",
        layer_types=types if "local" in types else (),
        local_window=hf["sliding_window"] - 1 if "local" in types else 0,
        activation=choice(hf, "hidden_act", "silu", HF_ACTIVATIONS, kind),
        mlp_gated=True,
        mlp_bias=kind == "llama" and flag(hf, "mlp_bias", False),
    )


def rope_theta(hf: dict[str, Any]) -> float:
    """Unscaled rotary base from `rope_parameters` (transformers ≥ 5) or `rope_theta`; scaling is rejected."""
    params = hf.get("rope_parameters") or {}
    for p in (params, hf.get("rope_scaling") or {}):
        check_unscaled(p, hf["model_type"])
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def check_unscaled(params: dict[str, Any], family: str) -> None:
    """Raise UnsupportedConfig unless a rope_parameters / rope_scaling dict asks for plain rotary."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise UnsupportedConfig(f"{family}: rope_type {rope_type!r}; only unscaled rotary ('default') is supported")


def named_layer_types(hf: dict[str, Any]) -> tuple[str, ...] | None:
    """config `layer_types` as "full" | "local" per layer; None when the config has no list."""
    names, n = hf.get("layer_types"), hf["num_hidden_layers"]
    if names is None:
        return None
    if len(names) != n or set(names) - set(LAYER_TYPES):
        raise UnsupportedConfig(
            f"{hf['model_type']}: layer_types {names} must name {n} layers, each one of {sorted(LAYER_TYPES)}"
        )
    return tuple(LAYER_TYPES[t] for t in names)


def layer_types(hf: dict[str, Any]) -> tuple[str, ...]:
    """Per-layer "full" | "local" for a causal model (see the module docstring)."""
    kind, n = hf["model_type"], hf["num_hidden_layers"]
    if kind == "mistral":
        return ("local" if hf.get("sliding_window") else "full",) * n
    if kind == "llama":
        return ("full",) * n
    window = hf.get("sliding_window") if flag(hf, "use_sliding_window", False) else None
    types = named_layer_types(hf)
    if types is None:
        first = hf.get("max_window_layers", 28)  # transformers' default
        types = tuple("local" if window and i >= first else "full" for i in range(n))
    if "local" in types and not window:
        raise UnsupportedConfig(
            f"{kind}: layer_types has sliding layers but no window; they need use_sliding_window true and a "
            "positive sliding_window"
        )
    return types


P = r"^(?:model\.)?"
L = P + r"layers\.(?P<i>\d+)\."
WB = r"\.(?P<p>weight|bias)$"


def layer_rules(prefix: str = P) -> list[Rule]:
    """Attention and MLP weights of layer i under `prefix` (a regex anchored at the key's start); the
    norms differ between Llama and Gemma and are listed by each family."""
    layer = prefix + r"layers\.(?P<i>\d+)\."
    return [
        Rule(
            layer + r"self_attn\.(?P<qkv>q|k|v)_proj" + WB,
            "layers.{i}.attn.qkv.{p}",
            fuse=("qkv", ("q", "k", "v")),
        ),
        Rule(layer + r"self_attn\.o_proj" + WB, "layers.{i}.attn.out.{p}"),
        Rule(layer + r"self_attn\.(?P<n>q|k)_norm\.weight$", "layers.{i}.attn.{n}_norm.weight"),
        Rule(layer + r"mlp\.(?P<gu>gate|up)_proj" + WB, "layers.{i}.mlp.up.{p}", fuse=("gu", ("gate", "up"))),
        Rule(layer + r"mlp\.down_proj" + WB, "layers.{i}.mlp.down.{p}"),
    ]


# layer norm names → embzoo's: post_attention_layernorm is the norm before the MLP here
NORMS = {"input_layernorm": "norm_attn", "post_attention_layernorm": "norm_mlp"}


def weights(prefix: str = P, norms: dict[str, str] = NORMS) -> list[Rule | Drop]:
    """The whole backbone's rules for keys under `prefix` (NV-Embed: "embedding_model."), with the
    layers' norms named by `norms` (checkpoint name → Block attribute; Gemma 2/3 have four)."""
    layer = prefix + r"layers\.(?P<i>\d+)\."
    return [
        Rule(prefix + r"embed_tokens\.weight$", "embed.tok.weight"),
        *layer_rules(prefix),
        *(Rule(layer + name + r"\.weight$", f"layers.{{i}}.{ours}.weight") for name, ours in norms.items()),
        Rule(prefix + r"norm\.weight$", "final_norm.weight"),
        Drop(layer + r"self_attn\.rotary_emb\.inv_freq$"),  # a buffer some old checkpoints saved
    ]


WEIGHTS = [*weights(), Drop(r"^lm_head\.weight$")]
HEADS = {t: [] for t in MODEL_TYPES}
