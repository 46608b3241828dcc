"""BERT, RoBERTa and XLM-R: learned absolute positions, post-norm, GELU MLP, biases everywhere.

Quirks and the fields that encode them:
- RoBERTa/XLM-R position ids start at padding_idx + 1 → `position_offset`; a pad-id token inside a text takes
  position padding_idx and is not counted (create_position_ids_from_input_ids) → `position_pad_id`.
- Separate query/key/value tensors → one fused `attn.qkv` in the order Q, K, V.
- Sequence-classification heads: BERT = pooler.dense → tanh → classifier; RoBERTa/XLM-R =
  classifier.dense → tanh → classifier.out_proj. Both become `head.dense` / `head.out`.
"""

from __future__ import annotations

from typing import Any

from embzoo.config import ArchConfig, UnsupportedConfig
from embzoo.conversion.config_values import HF_ACTIVATIONS, choice, sizes
from embzoo.conversion.rules import Drop, Rule

MODEL_TYPES = ("bert", "roberta", "xlm-roberta")


def to_arch(hf: dict[str, Any]) -> ArchConfig:
    """config.json of a BERT/RoBERTa/XLM-R checkpoint → ArchConfig."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UnsupportedConfig(
            f"{hf['model_type']}: position_embedding_type {hf['position_embedding_type']!r}; "
            "only 'absolute' is supported"
        )
    activation = choice(hf, "hidden_act", "gelu", HF_ACTIVATIONS, hf["model_type"])
    roberta = hf["model_type"] != "bert"
    if roberta and hf.get("pad_token_id", 1) is None:
        raise UnsupportedConfig(
            f"{hf['model_type']}: pad_token_id is null, but position ids start at pad_token_id + 1; "
            "set it in config.json (RoBERTa and XLM-R use 1)"
        )
    return ArchConfig(
        **sizes(hf),
        type_vocab_size=hf.get("type_vocab_size", 2),
        max_positions=hf.get("max_position_embeddings", 512),
        position_offset=hf.get("pad_token_id", 1) + 1 if roberta else 0,
        position_pad_id=hf.get("pad_token_id", 1) if roberta else None,
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=activation,
    )


P = r"^(?:bert\.|roberta\.)?"
L = P + r"encoder\.layer\.(?P<i>\d+)\."
WB = r"\.(?P<p>weight|bias)$"

# embeddings and attention: shared with jina-bert-v2, which keeps BERT's names for them
EMBEDDINGS = [
    Rule(P + r"embeddings\.word_embeddings\.weight$", "embed.tok.weight"),
    Rule(P + r"embeddings\.position_embeddings\.weight$", "embed.pos.weight"),
    Rule(P + r"embeddings\.token_type_embeddings\.weight$", "embed.token_type.weight"),
    Rule(P + r"embeddings\.LayerNorm" + WB, "embed.norm.{p}"),
    Drop(P + r"embeddings\.(?:position_ids|token_type_ids)$"),
]
ATTENTION = [
    Rule(
        L + r"attention\.self\.(?P<qkv>query|key|value)" + WB,
        "layers.{i}.attn.qkv.{p}",
        fuse=("qkv", ("query", "key", "value")),
    ),
    Rule(L + r"attention\.output\.dense" + WB, "layers.{i}.attn.out.{p}"),
    Rule(L + r"attention\.output\.LayerNorm" + WB, "layers.{i}.norm_attn.{p}"),
]
WEIGHTS = [
    *EMBEDDINGS,
    *ATTENTION,
    Rule(L + r"intermediate\.dense" + WB, "layers.{i}.mlp.up.{p}"),
    Rule(L + r"output\.dense" + WB, "layers.{i}.mlp.down.{p}"),
    Rule(L + r"output\.LayerNorm" + WB, "layers.{i}.norm_mlp.{p}"),
    Drop(r"^(?:cls|lm_head)\."),  # masked-LM heads of pre-training checkpoints
]

# sequence-classification heads, by the checkpoint's model_type; absent heads are dropped
HEADS = {
    "bert": [
        Rule(P + r"pooler\.dense" + WB, "head.dense.{p}"),
        Rule(r"^classifier" + WB, "head.out.{p}"),
    ],
    "roberta": [
        Drop(P + r"pooler\.dense" + WB),
        Rule(r"^classifier\.dense" + WB, "head.dense.{p}"),
        Rule(r"^classifier\.out_proj" + WB, "head.out.{p}"),
    ],
}
HEADS["xlm-roberta"] = HEADS["roberta"]

# masked-LM heads (SPLADE, see embzoo.conversion.output_heads): BERT's cls.predictions, RoBERTa's lm_head, as a
# ClassificationHead (dense → act → LayerNorm → out). With tie_word_embeddings (the default) transformers ties the
# decoder to the word embeddings and its bias to the head's `bias`, whatever else the file holds
MLM = r"^(?:cls\.predictions|lm_head)\."
MLM_WEIGHTS = [
    Rule(r"^(?:cls\.predictions\.transform\.dense|lm_head\.dense)" + WB, "dense.{p}"),
    Rule(r"^(?:cls\.predictions\.transform\.LayerNorm|lm_head\.layer_norm)" + WB, "norm.{p}"),
]
MLM_TIED = [Rule(P + r"embeddings\.word_embeddings\.weight$", "out.weight"), Rule(MLM + r"bias$", "out.bias")]
MLM_UNTIED = [Rule(MLM + r"decoder" + WB, "out.{p}")]


def mlm_head(hf: dict[str, Any]) -> dict[str, Any]:
    """ClassificationHead options of the masked-LM head: BERT's transform act is hidden_act, RoBERTa's GELU."""
    activation = "gelu" if hf["model_type"] != "bert" else choice(hf, "hidden_act", "gelu", HF_ACTIVATIONS, "bert")
    return {
        "hidden_size": hf["hidden_size"],
        "num_labels": hf["vocab_size"],
        "activation": activation,
        "norm": True,
        "norm_eps": hf.get("layer_norm_eps", 1e-12),
    }
