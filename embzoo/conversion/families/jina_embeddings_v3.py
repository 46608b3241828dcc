"""jina-embeddings-v3: XLM-R with rotary positions and one LoRA adapter per task, in two layouts.

Quirks and the fields that encode them:
- Original (remote-code) layout: the config class of jina-reranker-v2 (auto_map "AutoConfig" →
  XLMRobertaFlashConfig) with position_embedding_type "rotary" → AUTO_CONFIG + AUTO_CONFIG_MATCH claim it (the
  absolute variant stays with jina_xlm_roberta); flash names as there (mixer.Wqkv = [Q; K; V] → `attn.qkv`, norm1 /
  norm2 post-norm, emb_ln → `embed.norm`).
- transformers-native layout (model_type "jina_embeddings_v3", the -hf repo): separate q/k/v_proj fused into
  `attn.qkv`, o_proj, post_attention_layernorm / post_mlp_layernorm, embeddings.LayerNorm. Its task adapters are
  PEFT folders beside the weights (retrieval_query/, …, text_matching/; LoRA on q/k/v separately, lora_embedding_A/B
  on the embeddings) → PEFT_TASKS, PEFT_TASK_MODULES, PEFT_IGNORE (read and written by
  embzoo.conversion.task_lora_peft; q/k/v fuse exactly into one LoRA of rank 3r on `attn.qkv`).
- Rotary NeoX over the whole head, base rotary_emb_base (native: rope_parameters.rope_theta; 20000 in the real
  config), positions from 0 in each sequence → `positions` "rope", `rope_theta`; no position table.
- Every Linear and Embedding is parametrized (torch.nn.utils.parametrize): <mod>.parametrizations.weight.original
  is the weight, <mod>.parametrizations.weight.0.lora_A / lora_B the factors stacked over lora_adaptations →
  `lora_tasks`, `lora_rank`, `lora_alpha` and the layers' lora_A / lora_B (shapes and math in
  embzoo.modeling.task_lora; A and B swap roles on embeddings). The pooler's (unused) parametrization is dropped.
"""

from __future__ import annotations

from typing import Any

from embzoo.config import ArchConfig, UnsupportedConfig
from embzoo.conversion.config_values import choice, sizes
from embzoo.conversion.families.bert import WB
from embzoo.conversion.families.jina_xlm_roberta import ACTIVATIONS, AUTO_CONFIG
from embzoo.conversion.rules import Drop, Rule

MODEL_TYPES = ("jina_embeddings_v3",)  # the transformers-native layout
AUTO_CONFIG_MATCH = {"position_embedding_type": "rotary"}  # the original layout, claimed through AUTO_CONFIG
NAME = "jina-embeddings-v3"


def to_arch(hf: dict[str, Any]) -> ArchConfig:
    """config.json of either layout → ArchConfig (defaults: each config class's)."""
    native = hf.get("model_type") == MODEL_TYPES[0]
    if native:
        rope = hf.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default":
            raise UnsupportedConfig(f"{NAME}: rope_type {rope['rope_type']!r}; only 'default' is supported")
        theta = rope.get("rope_theta", 20000.0)
    elif hf.get("position_embedding_type") != "rotary":
        raise UnsupportedConfig(
            f"{NAME}: position_embedding_type {hf.get('position_embedding_type')!r}; this family is the 'rotary' "
            "variant (absolute positions are jina_xlm_roberta's)"
        )
    else:
        theta = hf.get("rotary_emb_base", 10000.0)
    tasks = () if native else tuple(hf.get("lora_adaptations") or ())
    return ArchConfig(
        **sizes(hf),
        type_vocab_size=hf.get("type_vocab_size", 1 if native else 2),
        positions="rope",
        rope_theta=theta,
        max_positions=hf.get("max_position_embeddings", 8194 if native else 512),
        norm_eps=hf.get("layer_norm_eps", 1e-5 if native else 1e-12),
        activation=choice(hf, "hidden_act", "gelu", ACTIVATIONS, NAME),
        lora_tasks=tasks,
        lora_rank=hf.get("lora_rank", 4) if tasks else 0,
        lora_alpha=hf.get("lora_alpha", 1) if tasks else 1.0,
    )


P = r"^(?:roberta\.)?"
L = P + r"encoder\.layers\.(?P<i>\d+)\."  # original layout
N = P + r"layers\.(?P<i>\d+)\."  # native layout
WEIGHT = r"(?:\.parametrizations\.weight\.original|\.weight)$"  # parametrized (original) or plain
LORA = r"\.parametrizations\.weight\.0\.lora_(?P<f>[AB])$"


def _adapted(source: str, target: str, bias: bool = True) -> list[Rule]:
    """Rules for one parametrized layer: its weight, its stacked LoRA factors, and its bias."""
    rules = [Rule(source + WEIGHT, target + ".weight"), Rule(source + LORA, target + ".lora_{f}")]
    return rules + [Rule(source + r"\.bias$", target + ".bias")] if bias else rules


WEIGHTS = [
    *_adapted(P + r"embeddings\.word_embeddings", "embed.tok", bias=False),
    *_adapted(P + r"embeddings\.token_type_embeddings", "embed.token_type", bias=False),
    Rule(P + r"emb_ln" + WB, "embed.norm.{p}"),
    *_adapted(L + r"mixer\.Wqkv", "layers.{i}.attn.qkv"),
    *_adapted(L + r"mixer\.out_proj", "layers.{i}.attn.out"),
    Rule(L + r"norm1" + WB, "layers.{i}.norm_attn.{p}"),
    *_adapted(L + r"mlp\.fc1", "layers.{i}.mlp.up"),
    *_adapted(L + r"mlp\.fc2", "layers.{i}.mlp.down"),
    Rule(L + r"norm2" + WB, "layers.{i}.norm_mlp.{p}"),
    # transformers-native names (the -hf layout)
    Rule(P + r"embeddings\.LayerNorm" + WB, "embed.norm.{p}"),
    Rule(N + r"self_attn\.(?P<part>[qkv])_proj" + WB, "layers.{i}.attn.qkv.{p}", fuse=("part", ("q", "k", "v"))),
    Rule(N + r"self_attn\.o_proj" + WB, "layers.{i}.attn.out.{p}"),
    Rule(N + r"post_attention_layernorm" + WB, "layers.{i}.norm_attn.{p}"),
    Rule(N + r"mlp\.fc1" + WB, "layers.{i}.mlp.up.{p}"),
    Rule(N + r"mlp\.fc2" + WB, "layers.{i}.mlp.down.{p}"),
    Rule(N + r"post_mlp_layernorm" + WB, "layers.{i}.norm_mlp.{p}"),
    Drop(P + r"pooler\.dense\."),  # XLMRobertaModel's pooler (and its LoRA): mean pooling does not use it
    Drop(r"^lm_head\."),
]

PEFT_TASKS = ("retrieval.query", "retrieval.passage", "separation", "classification", "text-matching")
PEFT_TASK_MODULES = {  # embzoo module → the -hf modules whose LoRA makes its update (fused parts in row order)
    "embed.tok": ["embeddings.word_embeddings"],
    "embed.token_type": ["embeddings.token_type_embeddings"],
    "layers.{i}.attn.qkv": [
        "layers.{i}.self_attn.q_proj",
        "layers.{i}.self_attn.k_proj",
        "layers.{i}.self_attn.v_proj",
    ],
    "layers.{i}.attn.out": ["layers.{i}.self_attn.o_proj"],
    "layers.{i}.mlp.up": ["layers.{i}.mlp.fc1"],
    "layers.{i}.mlp.down": ["layers.{i}.mlp.fc2"],
}
PEFT_IGNORE = r"^pooler\."  # the pooler's LoRA: mean pooling does not use it

HEADS: dict[str, list[Rule]] = {AUTO_CONFIG: [], MODEL_TYPES[0]: []}  # embedders only
