"""Gemma decoders: Gemma 1 (bge-reranker-v2-gemma), Gemma 2 (bge-multilingual-gemma2) and Gemma 3 text
(EmbeddingGemma). This module translates all three configs and holds Gemma 1's weight table; Gemma 2/3 use
the same translation with the sandwich-norm table in `gemma2.py` (load_backbone takes one weight table per
family, and post_attention_layernorm is the norm before the MLP in Gemma 1 but the one after attention in
Gemma 2/3).

Quirks and the fields that encode them:
- Llama layout (attention and MLP weight names from `llama.layer_rules`), pre-norm RMSNorm blocks with a
  final norm, no embedding norm → `norm="rms"`, `final_norm=True`, `embed_norm=False`; eps `rms_norm_eps`.
- Token embeddings × sqrt(hidden_size), the factor rounded to the weight dtype first (bf16: sqrt(3072) →
  55.5) → `embed_scale`.
- RMSNorm computes x / rms(x) · (1 + w) in float32, also for Gemma 3's q/k norms → `norm_weight_offset=1`.
- GeGLU: down(gelu_tanh(gate) · up) → `mlp_gated`, `activation` from `hidden_activation` (Gemma 2/3) or
  `hidden_act` (Gemma 1, whose legacy spelling "gelu" means the tanh approximation, as transformers reads
  it; an old config's `hidden_activation` wins). No MLP biases; `attention_bias` on q/k/v and o_proj.
- `head_dim` is its own key (default 256, e.g. 256 with hidden 3072 / 16 heads) → `head_dim`; GQA via
  `num_key_value_heads` → `num_kv_heads`.
- Gemma 2/3: scores scaled by `query_pre_attn_scalar`^-0.5 (default 256), not head_dim^-0.5 →
  `attn_scale`. Gemma 2 `attn_logit_softcapping` c maps scores to c·tanh(s/c) (default 50; null = off) →
  `attn_softcap`; Gemma 3 configs carry the key too, but its attention never applies it (transformers
  passes no softcap): ignored. `final_logit_softcapping` belongs to the LM head: ignored.
- Gemma 2/3 sandwich norms: input_layernorm → `norm_attn`, post_attention_layernorm → `norm_attn_out`,
  pre_feedforward_layernorm → `norm_mlp`, post_feedforward_layernorm → `norm_mlp_out`
  (`norm_placement="sandwich"`). Gemma 3 adds self_attn.q_norm / k_norm over each head → `qk_norm="head"`.
- Gemma 2/3 alternate sliding and full layers: an explicit `layer_types` list, else transformers' default
  pattern (layer i is full iff (i + 1) % n == 0 with n = 2 for Gemma 2, Gemma 3 `sliding_window_pattern`
  or 6) → `layer_types`. Window `sliding_window` W (default 4096): causal layers see keys i-W+1..i →
  `local_window=W-1`.
- Rotary over the whole head: Gemma 1/2 one theta (`rope_parameters.rope_theta` or `rope_theta`, default
  1e4); Gemma 3 one per layer type, `rope_parameters` keyed by "full_attention" / "sliding_attention"
  (transformers ≥ 5) or `rope_theta` / `rope_local_base_freq` (defaults 1e6 / 1e4) → `rope_theta` /
  `rope_theta_local`. Scaled rotary (e.g. Gemma 3's linear `rope_scaling` on full layers) is rejected.
- Causal by default. `use_bidirectional_attention: true` (EmbeddingGemma) → `causal=False` with Gemma 3's
  mask: full layers see everything, sliding layers |i - j| <= W // 2 (transformers sets the window to
  W // 2 + 1 and keeps |i - j| < it) → `local_window=W//2`. transformers implements this mask for Gemma 3
  only (its Gemma 1/2 masks ignore the flag); embzoo applies the same rule to all three. `is_causal: false`
  is bidirectional without windows, as in `llama.py`.
- Weight names: *Model checkpoints have no prefix, *ForCausalLM ones "model." and an lm_head (dropped).
- Activations outgrow float16 (EmbeddingGemma's card: run float32 or bfloat16) → `FLOAT16_OVERFLOWS`:
  `embzoo.load` refuses dtype float16 for these families.
"""

from __future__ import annotations

from typing import Any

from embzoo.config import ArchConfig, UnsupportedConfig
from embzoo.conversion.config_values import HF_ACTIVATIONS, choice, flag, sizes
from embzoo.conversion.families import llama
from embzoo.conversion.rules import Drop, Rule

MODEL_TYPES = ("gemma",)
NEEDS_RECIPE = True  # decoder embedders: prompts, end token and attention direction live in the catalog
FLOAT16_OVERFLOWS = True
# Gemma 1's legacy "gelu" means the tanh approximation (transformers #29402)
GEMMA1_ACTIVATIONS = HF_ACTIVATIONS | {"gelu": "gelu_tanh"}
# Gemma 3 rotary: layer type → (legacy config key, transformers' default theta)
GEMMA3_THETAS = {"full_attention": ("rope_theta", 1e6), "sliding_attention": ("rope_local_base_freq", 1e4)}


def to_arch(hf: dict[str, Any]) -> ArchConfig:
    """config.json of a Gemma / Gemma 2 / Gemma 3 text checkpoint → ArchConfig."""
    kind = hf["model_type"]
    later = kind != "gemma"  # Gemma 2 and 3
    bidirectional = flag(hf, "use_bidirectional_attention", False)
    causal = flag(hf, "is_causal", True) and not bidirectional
    types = _layer_types(hf) if later and (causal or bidirectional) else ()
    local = "local" in types
    window = hf.get("sliding_window", 4096) if local else 0
    if local and not (isinstance(window, int) and window >= 2):
        raise UnsupportedConfig(f"{kind}: sliding layers need an integer sliding_window >= 2; got {window!r}")
    theta, theta_local = _rope_thetas(hf) if kind == "gemma3_text" else (llama.rope_theta(hf), 0.0)
    attention_bias = flag(hf, "attention_bias", False)
    return ArchConfig(
        **sizes(hf),
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or 256,
        type_vocab_size=0,
        positions="rope",
        max_positions=hf.get("max_position_embeddings", 8192),
        embed_norm=False,
        embed_scale=hf["hidden_size"] ** 0.5,
        rope_theta=theta,
        rope_theta_local=theta_local,
        norm="rms",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        norm_weight_offset=1.0,
        norm_placement="sandwich" if later else "pre",
        final_norm=True,
        causal=causal,
        qkv_bias=attention_bias,
        out_bias=attention_bias,
        qk_norm="head" if kind == "gemma3_text" else "none",
        attn_scale=hf.get("query_pre_attn_scalar", 256) ** -0.5 if later else 0.0,
        attn_softcap=(hf.get("attn_logit_softcapping", 50.0) or 0.0) if kind == "gemma2" else 0.0,
        layer_types=types if local else (),
        local_window=(window - 1 if causal else window // 2) if local else 0,
        activation=_activation(hf),
        mlp_gated=True,
        mlp_bias=False,
    )


def _activation(hf: dict[str, Any]) -> str:
    """The MLP activation: `hidden_activation`, and for Gemma 1 `hidden_act` when that is absent."""
    if hf["model_type"] != "gemma":
        return choice(hf, "hidden_activation", "gelu_pytorch_tanh", HF_ACTIVATIONS, hf["model_type"])
    key = "hidden_activation" if hf.get("hidden_activation") else "hidden_act"
    return choice(hf, key, "gelu_pytorch_tanh", GEMMA1_ACTIVATIONS, "gemma")


def _layer_types(hf: dict[str, Any]) -> tuple[str, ...]:
    """Gemma 2/3 per-layer "full" | "local": `layer_types`, else transformers' default pattern."""
    types = llama.named_layer_types(hf)
    if types is not None:
        return types
    every = hf.get("sliding_window_pattern", 6) if hf["model_type"] == "gemma3_text" else 2
    if not isinstance(every, int) or every < 1:
        raise UnsupportedConfig(f"gemma3_text: sliding_window_pattern {every!r} must be a positive integer")
    return tuple("full" if (i + 1) % every == 0 else "local" for i in range(hf["num_hidden_layers"]))


def _rope_thetas(hf: dict[str, Any]) -> tuple[float, float]:
    """Gemma 3 (full, sliding) rotary thetas from keyed `rope_parameters` or the legacy keys."""
    params = hf.get("rope_parameters") or {}
    if not isinstance(params, dict) or set(params) - set(GEMMA3_THETAS):
        raise UnsupportedConfig(
            f"gemma3_text: rope_parameters {params!r} must be keyed by layer type {sorted(GEMMA3_THETAS)}"
        )
    llama.check_unscaled(hf.get("rope_scaling") or {}, "gemma3_text")  # legacy: applies to full layers
    thetas = []
    for layer_type, (key, default) in GEMMA3_THETAS.items():
        p = params.get(layer_type) or {}
        llama.check_unscaled(p, f"gemma3_text {layer_type}")
        thetas.append(float(p.get("rope_theta", hf.get(key, default))))
    return thetas[0], thetas[1]


SANDWICH_NORMS = {
    "input_layernorm": "norm_attn",
    "post_attention_layernorm": "norm_attn_out",
    "pre_feedforward_layernorm": "norm_mlp",
    "post_feedforward_layernorm": "norm_mlp_out",
}


def weights(sandwich: bool) -> list[Rule | Drop]:
    """Gemma's backbone rules (prefix "model." optional), Gemma 1's norms or Gemma 2/3's sandwich norms."""
    return [*llama.weights(norms=SANDWICH_NORMS if sandwich else llama.NORMS), Drop(r"^lm_head\.weight$")]


WEIGHTS = weights(sandwich=False)
HEADS = {t: [] for t in MODEL_TYPES}
