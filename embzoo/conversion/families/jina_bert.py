"""jina-bert-v2 (jina-embeddings-v2-*, jina-reranker-v1-*): BERT with ALiBi and a gated MLP, post-norm.

Quirks and the fields that encode them:
- No position table: symmetric ALiBi, score −= slope_h·|i − j| → `positions="alibi"` (slopes for any
  head count in embzoo.modeling.positions). `max_positions` = max_position_embeddings (8192).
- feed_forward_type "geglu" / "reglu": mlp.gated_layers [2I, D] (no bias) yields [gated; non-gated],
  the activation (exact GELU / ReLU, whatever hidden_act says) on the FIRST half → `mlp_gated`, the
  rows as they are; mlp.wo [D, I] + bias → `mlp_up_bias=False`. Other feed_forward_types are rejected.
- The MLP's residual and post-norm live inside the checkpoint's mlp module (mlp.layernorm) →
  `norm_mlp`; attention.output.LayerNorm → `norm_attn`.
- Separate query/key/value tensors → one fused `attn.qkv` in the order Q, K, V.
- Rerankers (JinaBertForSequenceClassification): CLS → pooler.dense → tanh → classifier, as BERT.

Routing: the checkpoints' config.json says model_type "bert" (with position_embedding_type "alibi",
architectures ["JinaBertModel" / "JinaBertForMaskedLM" / ...]); CONFIG_MATCH claims exactly those
"bert" configs, ahead of the BERT family (which rejects ALiBi).

jina-embeddings-v2-base-code runs other remote code, jinaai/jina-bert-v2-qk-post-norm. No config key
describes its differences; its auto_map names that code ("<repo>--<module>.<class>"), and
`_qk_post_norm` reads it there (an auto_map without the repo prefix is not recognised; its weights then
fail strict loading with WeightMismatch). That layer:
- LayerNorm on q and on k over all heads at once (attention.self.layer_norm_q / layer_norm_k, eps =
  layer_norm_eps, with bias), after the projections' bias, before the head split → `qk_norm`.
- attention.output.LayerNorm(h + dense(attn)) is followed by a second residual + norm, the layer-level
  layer_norm_1: h = layer_norm_1(h + attention.output.LayerNorm(h + dense(attn))) → `attn_second_norm`.
- The MLP is renamed: mlp.up_gated_layer [2I, D] (no bias) yields [non-gated; gated], the activation on
  the SECOND half → reorder=(1, 0) to embzoo's [gate; up]; mlp.down_layer [D, I] + bias; its residual
  norm is the layer-level layer_norm_2 → `norm_mlp`.
"""

from __future__ import annotations

from typing import Any

from embzoo.config import ArchConfig, UnsupportedConfig
from embzoo.conversion.config_values import choice, sizes
from embzoo.conversion.families import bert
from embzoo.conversion.families.bert import WB, L
from embzoo.conversion.rules import Drop, Rule

MODEL_TYPES = ("bert",)
CONFIG_MATCH = {"position_embedding_type": "alibi"}

# feed_forward_type → activation on the gate half of the MLP's up projection (exact GELU for geglu)
GLU_ACTS = {"geglu": "gelu", "reglu": "relu"}
QK_POST_NORM = "jinaai/jina-bert-v2-qk-post-norm"  # remote code of jina-embeddings-v2-base-code


def _qk_post_norm(hf: dict[str, Any]) -> bool:
    """True when config.json's auto_map points at the remote code jinaai/jina-bert-v2-qk-post-norm.

    auto_map values read "<repo>--<module>.<class>" (a list of them for tokenizers); the repo names the
    implementation of the architecture, the one thing in -code's config.json that tells its layer apart.
    """
    refs: list[Any] = []
    for value in (hf.get("auto_map") or {}).values():
        refs += value if isinstance(value, list | tuple) else [value]
    return any(isinstance(ref, str) and ref.split("--")[0] == QK_POST_NORM for ref in refs)


def to_arch(hf: dict[str, Any]) -> ArchConfig:
    """config.json of a jina-bert-v2 checkpoint → ArchConfig."""
    positions = hf.get("position_embedding_type", "absolute")
    if positions != "alibi":
        raise UnsupportedConfig(
            f"jina-bert-v2: position_embedding_type {positions!r}; only 'alibi' is supported here "
            "(absolute-position BERT checkpoints belong to the BERT family)"
        )
    activation = choice(hf, "feed_forward_type", "original", GLU_ACTS, "jina-bert-v2")
    post_norm = _qk_post_norm(hf)
    return ArchConfig(
        **sizes(hf),
        type_vocab_size=hf.get("type_vocab_size", 2),
        positions="alibi",
        max_positions=hf.get("max_position_embeddings", 512),
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=activation,
        mlp_gated=True,
        mlp_up_bias=False,  # gated_layers / up_gated_layer have no bias; wo / down_layer have one
        qk_norm="vector" if post_norm else "none",
        attn_second_norm=post_norm,
    )


# BERT's names for the embeddings (no position table here) and attention; jina's own MLP and norms
WEIGHTS = [
    *bert.EMBEDDINGS,
    *bert.ATTENTION,
    Rule(L + r"mlp\.gated_layers\.weight$", "layers.{i}.mlp.up.weight"),  # [gated; non-gated] = [gate; up]
    Rule(L + r"mlp\.wo" + WB, "layers.{i}.mlp.down.{p}"),
    Rule(L + r"mlp\.layernorm" + WB, "layers.{i}.norm_mlp.{p}"),
    # the qk-post-norm layout (jina-embeddings-v2-base-code)
    Rule(L + r"attention\.self\.layer_norm_q" + WB, "layers.{i}.attn.q_norm.{p}"),
    Rule(L + r"attention\.self\.layer_norm_k" + WB, "layers.{i}.attn.k_norm.{p}"),
    Rule(L + r"layer_norm_1" + WB, "layers.{i}.norm_attn2.{p}"),
    # [non-gated; gated] → [gate; up]
    Rule(L + r"mlp\.up_gated_layer\.weight$", "layers.{i}.mlp.up.weight", reorder=(1, 0)),
    Rule(L + r"mlp\.down_layer" + WB, "layers.{i}.mlp.down.{p}"),
    Rule(L + r"layer_norm_2" + WB, "layers.{i}.norm_mlp.{p}"),
    Drop(r"^cls\."),  # masked-LM head of the pre-training checkpoints
]

# sequence-classification heads (jina-reranker-v1): BERT's pooler + classifier
HEADS = {"bert": bert.HEADS["bert"]}
