"""NomicBert (nomic-embed-text-v1/v1.5, nomic-bert-2048, snowflake-arctic-embed-m-long): RoPE, gated MLP, post-norm.

Two config layouts share model_type "nomic_bert"; the presence of "n_embd" picks the reader:
- original (the authors' remote code, a GPT2Config subclass): n_embd, n_head, n_layer, n_inner, ...
  Some hub configs also carry transformers' keys (hidden_size, rope_parameters, ...); the remote code
  reads only the original ones, so they win.
- transformers' native NomicBertConfig: hidden_size, num_attention_heads, rope_parameters, ...

Quirks and the fields that encode them:
- Rotary NeoX (rotate-half) on the first rotary_emb_fraction of each head → `positions="rope"`,
  `rope_theta` = rotary_emb_base, `rotary_fraction`. Absent keys take the remote code's defaults
  (GPT2Config's and NomicBertConfig's: base 10000, biases on, eps 1e-5, n_inner None), not the values
  released checkpoints write (base 1000, no biases, eps 1e-12).
- rotary_scaling_factor f set: dynamic NTK for sequences longer than max_trained_positions, base
  θ·(f·len/max − (f − 1))^(r/(r−2)) → `rope_scaling="ntk_dynamic"`, `rope_factor`, `rope_original_max`.
  The references use the padded batch length and cache it; embzoo uses each sequence's own length.
  Native layout: rope_parameters {rope_type: dynamic, factor}, threshold max_position_embeddings, as in
  transformers; embzoo then accepts factor × max_position_embeddings tokens.
- Longest input → `max_positions`: n_positions (v1.5 says 8192, trained 2048); n_positions <= 0 means
  2048, as in the remote code's from_pretrained.
- Gated MLP, original: fc11 = up, fc12 = gate, y = fc2(fc11(x) * act(fc12(x))) → `mlp_gated`, fused
  [fc12; fc11]; activation_function swiglu = SiLU, geglu = exact GELU. Native: gate_proj / up_proj.
- Gated width: n_inner (default int(8·n_embd/3)) is rounded UP to a multiple of 256 → `intermediate_size`.
- Non-gated activation_function gelu / gelu_new / gelu_fast / gelu_pytorch_tanh: mlp.fc1 / mlp.fc2 with
  EXACT GELU for every one of them (the remote code passes F.gelu, whatever the name says).
- attn.out_proj has a bias iff qkv_proj_bias → `qkv_bias` = `out_bias`; fc11/fc12 use mlp_fc1_bias,
  fc2 mlp_fc2_bias, and embzoo has one `mlp_bias` (unequal flags are rejected). Native: no biases.
- Wqkv rows are [all Q; all K; all V] → `attn.qkv` as is; native q/k/v_proj fuse in that order.
- Embeddings: word + token type (none when type_vocab_size <= 0), then emb_ln → `embed_norm`, no
  position table. Vocab rows rounded up to pad_vocab_size_multiple → `vocab_size`.
- Post-norm (norm1 after attention, norm2 after the MLP), no final norm.
- transformers' save_pretrained writes the ORIGINAL weight names (reversing its conversion mapping) under a
  native config; both namings are accepted under either config, with an optional "bert." (remote For*
  classes) or "nomic_bert." (transformers For* classes) prefix.
- Sequence classification (both layouts): pooler.dense → tanh on the first token → classifier (BERT's head).

Rejected: prenorm, interleaved rotary, xPos (rotary_emb_scale_base), learned absolute positions
(rotary_emb_fraction 0), MoE layers (nomic-embed-text-v2-moe), GLU (sigmoid gate), causal, GQA, and
flags the remote code ignores but its training code might not (use_rms_norm, parallel_block).
"""

from __future__ import annotations

import math
from typing import Any

from embzoo.config import ArchConfig, UnsupportedConfig
from embzoo.conversion.config_values import HF_ACTIVATIONS, choice, flag, sizes
from embzoo.conversion.rules import Drop, Rule

MODEL_TYPES = ("nomic_bert",)

# original activation_function → (gated, embzoo activation); gelu names all run exact GELU there
ORIGINAL_ACTS = {"swiglu": (True, "silu"), "geglu": (True, "gelu")}
ORIGINAL_ACTS |= {name: (False, "gelu") for name in ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh")}
# native hidden_act (transformers ACT2FN, applied to gate_proj) → embzoo activation
GATED_MULTIPLE = 256  # the remote code's NomciBertGatedMLP(multiple_of=256)
NATIVE_THETA = 1000.0  # transformers' NomicBertConfig.default_theta


def to_arch(hf: dict[str, Any]) -> ArchConfig:
    """config.json of a NomicBert checkpoint (original or transformers layout) → ArchConfig."""
    moe = hf.get("moe_every_n_layers") or 0, hf.get("num_experts") or 0
    if any(moe):
        raise UnsupportedConfig(
            f"nomic_bert: mixture-of-experts layers (moe_every_n_layers={moe[0]}, num_experts={moe[1]}) "
            "are not supported"
        )
    return _original(hf) if "n_embd" in hf else _native(hf)


def _original(hf: dict[str, Any]) -> ArchConfig:
    for key in ("prenorm", "rotary_emb_interleaved", "causal", "use_rms_norm", "parallel_block", "norm_mlp"):
        if flag(hf, key, False):
            raise UnsupportedConfig(f"nomic_bert: {key}=true is not supported")
    if hf.get("rotary_head_dim"):
        raise UnsupportedConfig("nomic_bert: rotary_head_dim (rotary over the head axis) is not supported")
    if hf.get("rotary_emb_scale_base") is not None:
        raise UnsupportedConfig("nomic_bert: rotary_emb_scale_base (xPos scaling) is not supported")
    d, heads = hf["n_embd"], hf["n_head"]
    if hf.get("num_heads_kv") not in (None, heads):
        raise UnsupportedConfig(f"nomic_bert: num_heads_kv {hf['num_heads_kv']} != n_head {heads} is not supported")
    fraction = float(hf.get("rotary_emb_fraction", 0.0))
    if fraction <= 0:
        raise UnsupportedConfig(
            "nomic_bert: rotary_emb_fraction 0 means learned absolute positions, which are not supported"
        )
    head_dim = d // heads if heads and d % heads == 0 else 0
    if head_dim and not (head_dim * fraction).is_integer():
        raise UnsupportedConfig(f"nomic_bert: rotary_emb_fraction {fraction} of head dim {head_dim} is not whole")
    gated, activation = choice(hf, "activation_function", "gelu_new", ORIGINAL_ACTS, "nomic_bert")
    fc1_bias, fc2_bias = flag(hf, "mlp_fc1_bias", True), flag(hf, "mlp_fc2_bias", True)
    if fc1_bias != fc2_bias:
        raise UnsupportedConfig(
            f"nomic_bert: mlp_fc1_bias={fc1_bias} with mlp_fc2_bias={fc2_bias}; embzoo needs both or neither"
        )
    inner = hf.get("n_inner") or (int(8 * d / 3) if gated else 4 * d)
    if gated:
        inner = math.ceil(inner / GATED_MULTIPLE) * GATED_MULTIPLE
    multiple = hf.get("pad_vocab_size_multiple") or 1
    vocab = math.ceil(hf["vocab_size"] / multiple) * multiple
    longest = hf.get("n_positions", hf.get("max_position_embeddings", 1024))
    scaling = {}
    if hf.get("rotary_scaling_factor"):
        scaling = dict(
            rope_scaling="ntk_dynamic",
            rope_factor=float(hf["rotary_scaling_factor"]),
            rope_original_max=int(hf.get("max_trained_positions", 2048)),
        )
    qkv_bias = flag(hf, "qkv_proj_bias", True)
    return ArchConfig(
        vocab_size=vocab,
        hidden_size=d,
        num_layers=hf["n_layer"],
        num_heads=heads,
        intermediate_size=inner,
        type_vocab_size=max(hf.get("type_vocab_size", 2), 0),
        positions="rope",
        max_positions=longest if longest > 0 else 2048,
        rope_theta=float(hf.get("rotary_emb_base", 10000.0)),
        rotary_fraction=fraction,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        qkv_bias=qkv_bias,
        out_bias=qkv_bias,
        activation=activation,
        mlp_gated=gated,
        mlp_bias=fc1_bias,
        **scaling,
    )


def _native(hf: dict[str, Any]) -> ArchConfig:
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "dynamic"):
        raise UnsupportedConfig(f"nomic_bert: rope_type {kind!r}; supported: 'default', 'dynamic'")
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise UnsupportedConfig(
            f"nomic_bert: partial_rotary_factor {partial} in a transformers-layout config (transformers' "
            "NomicBert rotates the whole head); use the original rotary_emb_fraction layout"
        )
    activation = choice(hf, "hidden_act", "silu", HF_ACTIVATIONS, "nomic_bert")
    trained = hf.get("max_position_embeddings", 2048)
    scaling, longest = {}, trained
    if kind == "dynamic":
        factor = float(rope["factor"])
        scaling = dict(rope_scaling="ntk_dynamic", rope_factor=factor, rope_original_max=trained)
        longest = int(trained * max(factor, 1.0))
    return ArchConfig(
        **sizes(hf),
        head_dim=hf.get("head_dim") or 0,
        type_vocab_size=hf.get("type_vocab_size", 2),
        positions="rope",
        max_positions=longest,
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", NATIVE_THETA))),
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        qkv_bias=False,
        out_bias=False,
        activation=activation,
        mlp_gated=True,
        mlp_bias=False,
        **scaling,
    )


P = r"^(?:bert\.|nomic_bert\.)?"
OL = P + r"encoder\.layers\.(?P<i>\d+)\."  # original layer names
NL = P + r"layers\.(?P<i>\d+)\."  # transformers layer names
WB = r"\.(?P<p>weight|bias)$"

WEIGHTS = [
    Rule(P + r"embeddings\.word_embeddings\.weight$", "embed.tok.weight"),
    Rule(P + r"embeddings\.token_type_embeddings\.weight$", "embed.token_type.weight"),
    Rule(P + r"emb_ln" + WB, "embed.norm.{p}"),
    Rule(P + r"embeddings\.LayerNorm" + WB, "embed.norm.{p}"),
    # original layout
    Rule(OL + r"attn\.Wqkv" + WB, "layers.{i}.attn.qkv.{p}"),  # rows [Q; K; V]
    Rule(OL + r"attn\.out_proj" + WB, "layers.{i}.attn.out.{p}"),
    Rule(OL + r"norm1" + WB, "layers.{i}.norm_attn.{p}"),
    Rule(OL + r"mlp\.(?P<part>fc12|fc11)" + WB, "layers.{i}.mlp.up.{p}", fuse=("part", ("fc12", "fc11"))),
    Rule(OL + r"mlp\.fc1" + WB, "layers.{i}.mlp.up.{p}"),  # non-gated MLP
    Rule(OL + r"mlp\.fc2" + WB, "layers.{i}.mlp.down.{p}"),
    Rule(OL + r"norm2" + WB, "layers.{i}.norm_mlp.{p}"),
    # transformers layout
    Rule(
        NL + r"self_attn\.(?P<qkv>q|k|v)_proj" + WB,
        "layers.{i}.attn.qkv.{p}",
        fuse=("qkv", ("q", "k", "v")),
    ),
    Rule(NL + r"self_attn\.o_proj" + WB, "layers.{i}.attn.out.{p}"),
    Rule(NL + r"post_attention_layernorm" + WB, "layers.{i}.norm_attn.{p}"),
    Rule(
        NL + r"mlp\.(?P<part>gate|up)_proj" + WB,
        "layers.{i}.mlp.up.{p}",
        fuse=("part", ("gate", "up")),
    ),
    Rule(NL + r"mlp\.down_proj" + WB, "layers.{i}.mlp.down.{p}"),
    Rule(NL + r"post_mlp_layernorm" + WB, "layers.{i}.norm_mlp.{p}"),
    Drop(P + r"embeddings\.(?:position|token_type)_ids$"),
    Drop(r"^cls\."),  # masked-LM heads (nomic-bert-2048, *ForMaskedLM)
]

# sequence-classification heads: BERT's pooler + classifier, under either layout's prefix
HEADS = {
    "nomic_bert": [
        Rule(P + r"pooler\.dense" + WB, "head.dense.{p}"),
        Rule(r"^classifier" + WB, "head.out.{p}"),
    ],
}
