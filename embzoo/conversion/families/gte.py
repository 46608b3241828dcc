"""Alibaba GTE "NewModel" (gte-{base,large}-en-v1.5, gte-multilingual-base/-reranker-base) and
Snowflake's copy of it (snowflake-arctic-embed-m-v2.0, model_type "gte"), plus transformers' GteModel.

Quirks and the fields that encode them:
- Post-norm blocks with rotary positions (NeoX rotate-half over the whole head) → `positions="rope"`,
  `rope_theta`, `norm_placement="post"`, `embed_norm=True`, no `final_norm`; the longest input is
  max_position_embeddings → `max_positions`. position_embedding_type "absolute" (a learned table
  embeddings.position_embeddings, ids 0..L-1) → `positions="absolute"`.
- rope_scaling {type: ntk, factor: f} is static NTK (base θ·f, frequencies / f^(2/d)) →
  `rope_scaling="ntk_static"`, `rope_factor`. transformers' GteConfig writes rope_parameters instead;
  its rope_type "linear" (frequencies / s at base θ') is the same formula with f = s^(d/2), θ = θ'/f,
  which is how it is translated (that is also how an ntk checkpoint is expressed for transformers:
  rope_type linear, factor f^(2/d), rope_theta θ·f).
- GeGLU MLP: mlp.up_gate_proj [2I, D] without bias yields [up | gate], GELU on the gate →
  `mlp_gated`, `activation`, rows reordered to embzoo's [gate; up] (reorder=(1, 0)); mlp.down_proj
  keeps its bias → `mlp_up_bias=False`. transformers' layout stores gate_proj / up_proj apart
  (fused in the order gate, up).
- One fused qkv_proj [3D, D] (rows Q, K, V) → `attn.qkv` as is; pack_qkv false stores
  attention.{q,k,v}_proj and transformers' layout self_attn.{q,k,v}_proj: both fused in the order q, k, v.
- type_vocab_size 0 (gte-base-en-v1.5) means no token-type table → `type_vocab_size=0`.
- layer_norm_type "rms_norm" makes each layer's attn_ln / mlp_ln an RMSNorm (weight only, eps
  layer_norm_eps, computed in fp32: x · rsqrt(mean(x²) + eps), then · weight) → `norm="rms"`, `norm_eps`;
  the embedding norm stays an nn.LayerNorm (weight and bias) → `embed_norm_layer=True` (set for both
  types: it is always a LayerNorm). The attn_ln / mlp_ln rules then meet only .weight.
- Weight names: the authors' layout with an optional "new." prefix (base_model_prefix of their *For*
  classes); transformers' save_pretrained writes that same layout by default, with the prefix "gte."
  for its *For* classes, and its own names (layers.{i}.self_attn..., post_*_layernorm) with
  save_original_format=False. All three are mapped.
- Rerankers (NewForSequenceClassification / GteForSequenceClassification): CLS → pooler.dense → tanh →
  classifier → `head.dense` / `head.out`. The sparse head of gte-multilingual-base (a token-level
  classifier [1, D] of NewForTokenClassification) is dropped when loading as an embedder: it is not
  part of the dense embedding (the HEADS rules turn into drops there).
- unpad_inputs / use_memory_efficient_attention / pack_qkv only pick an execution path or a naming;
  they are not read (some configs write them as strings, e.g. "true").

Rejected with UnsupportedConfig: logn_attention_scale (queries scaled by log(len)/log(max_pos));
layer_norm_type other than layer_norm / rms_norm; rope_scaling other than plain ntk (mixed_b, other types)
and rope_parameters other than default / linear; unknown hidden_act.
"""

from __future__ import annotations

from typing import Any

from embzoo.config import ArchConfig, UnsupportedConfig
from embzoo.conversion.config_values import HF_ACTIVATIONS, choice, flag, sizes
from embzoo.conversion.rules import Drop, Rule

MODEL_TYPES = ("new", "gte")

NORMS = {"layer_norm": "layer", "rms_norm": "rms"}  # layer_norm_type → ArchConfig.norm (attn_ln / mlp_ln)

# defaults of the config classes for keys a config.json may leave out: the authors' NewConfig (and
# Snowflake's copy, which writes every key) and transformers' GteConfig
DEFAULTS = {
    "new": {"rope_theta": 10000.0, "max_position_embeddings": 2048},
    "gte": {"rope_theta": 160000.0, "max_position_embeddings": 8192},
}


def _rope(hf: dict[str, Any], head_dim: int) -> dict[str, Any]:
    """The ArchConfig rotary fields from rope_parameters (transformers) or rope_theta + rope_scaling."""
    default_theta = DEFAULTS[hf["model_type"]]["rope_theta"]
    params = hf.get("rope_parameters")
    if params:
        kind = params.get("rope_type", "default")
        theta = float(params.get("rope_theta", default_theta))
        if kind == "default":
            return {"rope_theta": theta}
        if kind == "linear":
            # frequencies θ'^(-2i/d) / s == ntk_static with f = s^(d/2) at base θ'/f
            f = float(params["factor"]) ** (head_dim / 2)
            return {"rope_theta": theta / f, "rope_scaling": "ntk_static", "rope_factor": f}
        raise UnsupportedConfig(f"gte: rope_parameters rope_type {kind!r}; supported: 'default', 'linear'")
    theta = float(hf.get("rope_theta", default_theta))
    scaling = hf.get("rope_scaling")
    if not scaling:
        return {"rope_theta": theta}
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind != "ntk" or scaling.get("mixed_b") is not None:
        raise UnsupportedConfig(f"gte: rope_scaling {scaling}; only {{type: ntk, factor}} (static NTK) is supported")
    return {"rope_theta": theta, "rope_scaling": "ntk_static", "rope_factor": float(scaling["factor"])}


def to_arch(hf: dict[str, Any]) -> ArchConfig:
    """config.json of a GTE NewModel / GteModel checkpoint → ArchConfig."""
    model_type = hf["model_type"]
    if flag(hf, "logn_attention_scale", False):
        raise UnsupportedConfig("gte: logn_attention_scale (queries scaled by log(len)/log(max_pos)) is not supported")
    norm = choice(hf, "layer_norm_type", "layer_norm", NORMS, "gte")
    activation = choice(hf, "hidden_act", "gelu", HF_ACTIVATIONS, "gte")
    positions = hf.get("position_embedding_type", "rope")
    if positions not in ("rope", "absolute"):
        raise UnsupportedConfig(f"gte: position_embedding_type {positions!r}; supported: 'rope', 'absolute'")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    rope = _rope(hf, head_dim) if positions == "rope" else {}
    return ArchConfig(
        **sizes(hf),
        head_dim=hf.get("head_dim") or 0,
        type_vocab_size=hf.get("type_vocab_size", 1),
        positions=positions,
        max_positions=hf.get("max_position_embeddings", DEFAULTS[model_type]["max_position_embeddings"]),
        norm=norm,
        norm_eps=hf.get("layer_norm_eps", 1e-12),  # the block norms' eps, RMSNorm's too
        embed_norm_layer=True,  # embeddings.LayerNorm is an nn.LayerNorm whatever layer_norm_type says
        activation=activation,
        mlp_gated=True,
        mlp_up_bias=False,  # up_gate_proj has no bias; down_proj has one
        **rope,
    )


P = r"^(?:new\.|gte\.)?"
ORIG = P + r"encoder\.layer\.(?P<i>\d+)\."  # the authors' layout
NATIVE = P + r"layers\.(?P<i>\d+)\."  # transformers' GteModel, save_original_format=False
WB = r"\.(?P<p>weight|bias)$"

WEIGHTS = [
    Rule(P + r"embeddings\.word_embeddings\.weight$", "embed.tok.weight"),
    Rule(P + r"embeddings\.token_type_embeddings\.weight$", "embed.token_type.weight"),
    Rule(P + r"embeddings\.position_embeddings\.weight$", "embed.pos.weight"),  # position_embedding_type absolute
    Rule(P + r"embeddings\.LayerNorm" + WB, "embed.norm.{p}"),
    # the authors' layout
    Rule(ORIG + r"attention\.qkv_proj" + WB, "layers.{i}.attn.qkv.{p}"),  # rows [Q; K; V]
    Rule(ORIG + r"attention\.(?P<qkv>q|k|v)_proj" + WB, "layers.{i}.attn.qkv.{p}", fuse=("qkv", ("q", "k", "v"))),
    Rule(ORIG + r"attention\.o_proj" + WB, "layers.{i}.attn.out.{p}"),
    Rule(ORIG + r"attn_ln" + WB, "layers.{i}.norm_attn.{p}"),  # rms_norm: weight only
    Rule(ORIG + r"mlp\.up_gate_proj\.weight$", "layers.{i}.mlp.up.weight", reorder=(1, 0)),  # [up; gate] → [gate; up]
    Rule(ORIG + r"mlp\.down_proj" + WB, "layers.{i}.mlp.down.{p}"),
    Rule(ORIG + r"mlp_ln" + WB, "layers.{i}.norm_mlp.{p}"),  # rms_norm: weight only
    # transformers' own layout
    Rule(NATIVE + r"self_attn\.(?P<qkv>q|k|v)_proj" + WB, "layers.{i}.attn.qkv.{p}", fuse=("qkv", ("q", "k", "v"))),
    Rule(NATIVE + r"self_attn\.o_proj" + WB, "layers.{i}.attn.out.{p}"),
    Rule(NATIVE + r"post_attention_layernorm" + WB, "layers.{i}.norm_attn.{p}"),
    Rule(NATIVE + r"mlp\.(?P<gu>gate|up)_proj\.weight$", "layers.{i}.mlp.up.weight", fuse=("gu", ("gate", "up"))),
    Rule(NATIVE + r"mlp\.down_proj" + WB, "layers.{i}.mlp.down.{p}"),
    Rule(NATIVE + r"post_mlp_layernorm" + WB, "layers.{i}.norm_mlp.{p}"),
    Drop(P + r"embeddings\.position_ids$"),
    Drop(P + r"(?:embeddings\.)?rotary_emb\.(?:inv_freq|original_inv_freq|cos_cached|sin_cached)$"),  # rope buffers
    Drop(r"^lm_head\."),  # masked-LM heads (NewForMaskedLM, GteForMaskedLM)
]

# sequence-classification heads, by the checkpoint's model_type; loaded as an embedder they are dropped,
# and so is the token-level classifier [1, D] of gte-multilingual-base's sparse head
_CLS_HEAD = [
    Rule(P + r"pooler\.dense" + WB, "head.dense.{p}"),
    Rule(r"^classifier" + WB, "head.out.{p}"),
]
HEADS = {"new": _CLS_HEAD, "gte": _CLS_HEAD}
