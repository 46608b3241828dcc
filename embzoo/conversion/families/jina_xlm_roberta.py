"""XLM-R in the "flash" layout of Jina's remote code (XLMRobertaFlashConfig): jina-reranker-v2-base-multilingual.

The computation is XLM-R's (post-norm blocks, learned absolute positions, GELU MLP, biases everywhere,
RoBERTa's classification head); only the names and the config differ. Quirks and the fields that encode them:
- config.json has no model_type; auto_map "AutoConfig" names configuration_xlm_roberta.XLMRobertaFlashConfig
  → AUTO_CONFIG claims it (see embzoo.registry), HEADS are keyed by that class name.
- Position ids as XLM-R's create_position_ids_from_input_ids: padding_idx + 1 onwards → `position_offset`
  (pad_token_id + 1; the remote code's default pad_token_id is 1).
- One fused projection mixer.Wqkv [3D, D] whose rows are [Q; K; V] (split "(three h d)") → `attn.qkv` as is;
  mixer.out_proj → `attn.out`. Post-norm: norm1 after attention, norm2 after the MLP (mlp.fc1 → GELU → fc2).
- The embedding LayerNorm sits beside the embeddings as emb_ln → `embed.norm`.
- hidden_act: the remote code accepts only the GELUs: "gelu" is exact, "gelu_new" / "gelu_fast" /
  "gelu_pytorch_tanh" are its tanh approximation → `activation`.
- position_embedding_type "rotary" (jina-embeddings-v3, with LoRA adapters) is the jina_embeddings_v3 family's.
- Classification head (XLMRobertaForSequenceClassification): CLS → classifier.dense → tanh →
  classifier.out_proj, as RoBERTa's; the backbone has no pooler there (a plain XLMRobertaModel's is dropped).
"""

from __future__ import annotations

from typing import Any

from embzoo.config import ArchConfig, UnsupportedConfig
from embzoo.conversion.config_values import choice, sizes
from embzoo.conversion.families.bert import WB
from embzoo.conversion.rules import Drop, Rule

MODEL_TYPES = ()  # claimed through auto_map only
AUTO_CONFIG = "XLMRobertaFlashConfig"
NAME = "XLMRobertaFlash"
# hidden_act values the remote code accepts → ArchConfig.activation
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def to_arch(hf: dict[str, Any]) -> ArchConfig:
    """config.json of an XLMRobertaFlashConfig checkpoint → ArchConfig (defaults: the config class's)."""
    positions = hf.get("position_embedding_type", "absolute")
    if positions != "absolute":
        raise UnsupportedConfig(
            f"{NAME}: position_embedding_type {positions!r}; only 'absolute' (jina-reranker-v2) is supported, "
            "the rotary variant (jina-embeddings-v3) is the jina_embeddings_v3 family's"
        )
    pad = hf.get("pad_token_id", 1)
    if pad is None:
        raise UnsupportedConfig(
            f"{NAME}: pad_token_id is null, but position ids start at pad_token_id + 1; set it in config.json (1)"
        )
    return ArchConfig(
        **sizes(hf),
        type_vocab_size=hf.get("type_vocab_size", 2),
        max_positions=hf.get("max_position_embeddings", 512),
        position_offset=pad + 1,
        position_pad_id=pad,
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=choice(hf, "hidden_act", "gelu", ACTIVATIONS, NAME),
    )


P = r"^(?:roberta\.)?"
L = P + r"encoder\.layers\.(?P<i>\d+)\."
WEIGHTS = [
    Rule(P + r"embeddings\.word_embeddings\.weight$", "embed.tok.weight"),
    Rule(P + r"embeddings\.position_embeddings\.weight$", "embed.pos.weight"),
    Rule(P + r"embeddings\.token_type_embeddings\.weight$", "embed.token_type.weight"),
    Rule(P + r"emb_ln" + WB, "embed.norm.{p}"),
    Rule(L + r"mixer\.Wqkv" + WB, "layers.{i}.attn.qkv.{p}"),
    Rule(L + r"mixer\.out_proj" + WB, "layers.{i}.attn.out.{p}"),
    Rule(L + r"norm1" + WB, "layers.{i}.norm_attn.{p}"),
    Rule(L + r"mlp\.fc1" + WB, "layers.{i}.mlp.up.{p}"),
    Rule(L + r"mlp\.fc2" + WB, "layers.{i}.mlp.down.{p}"),
    Rule(L + r"norm2" + WB, "layers.{i}.norm_mlp.{p}"),
    Drop(P + r"pooler\.dense" + WB),  # XLMRobertaModel's pooler (embedders); classifiers have none
    Drop(r"^lm_head\."),  # XLMRobertaForMaskedLM
]

# RoBERTa's sequence-classification head (CLS → dense → tanh → out_proj), under RoBERTa's names
HEADS = {
    AUTO_CONFIG: [
        Rule(r"^classifier\.dense" + WB, "head.dense.{p}"),
        Rule(r"^classifier\.out_proj" + WB, "head.out.{p}"),
    ]
}
