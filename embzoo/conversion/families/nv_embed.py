"""NV-Embed (nvidia/NV-Embed-v1, -v2): a bidirectional Mistral backbone and a latent-attention pooler.

Quirks and the fields that encode them:
- config.json nests the backbone's config under `text_config` (model_type "bidir_mistral", Mistral's
  keys) and the pooler's under `latent_attention_config`; absent pooler keys take the remote code's
  defaults (LATENT_DEFAULTS).
- The backbone is Mistral with the causal mask removed and no sliding window → llama.to_arch with
  `is_causal` false (`causal=False`, no local layers), under the key prefix "embedding_model.".
- The pooler is a learned module, not a sentence-transformers mode → `pooler(hf)` builds a
  LatentAttentionPooler, POOLER_WEIGHTS fills it from "latent_attention_model.*" (the backbone's table
  drops those keys): 8 cross heads of width `cross_dim_head` (4096, not hidden/heads), a GEGLU
  feed-forward 4 × hidden wide (fixed in the remote code) stored [x; gate] and reordered to [gate; up].
- The instruction's tokens are left out of the mean (`is_mask_instruction` with right padding, the
  remote code's defaults) → `include_prompt=False`; the pooled vector is L2-normalized
  (`output_normalize`).
"""

from __future__ import annotations

from typing import Any

from embzoo.config import ArchConfig, UnsupportedConfig
from embzoo.conversion.config_values import flag
from embzoo.conversion.families import llama
from embzoo.conversion.rules import Drop, Rule
from embzoo.modeling.latent_attention import LatentAttentionPooler

MODEL_TYPES = ("nvembed",)
NEEDS_RECIPE = True  # decoder embedders: prompts, end token and attention direction live in the catalog
TEXT_MODEL_TYPES = ("bidir_mistral",)
# the remote code's LatentAttentionConfig defaults (NV-Embed-v2's values)
LATENT_DEFAULTS = {
    "num_latents_value": 512,
    "num_cross_heads": 8,
    "hidden_dim": 4096,
    "latent_dim": 4096,
    "cross_dim_head": 4096,
    "output_normalize": True,
}
FEED_FORWARD_MULT = 4


def _text_config(hf: dict[str, Any]) -> dict[str, Any]:
    text = hf.get("text_config")
    if not isinstance(text, dict):
        raise UnsupportedConfig("nvembed: config.json has no text_config (the Mistral backbone's config)")
    kind = text.get("model_type", "llama")  # the remote code's default when the key is absent
    if kind not in TEXT_MODEL_TYPES:
        raise UnsupportedConfig(f"nvembed: text_config model_type {kind!r}; supported: {list(TEXT_MODEL_TYPES)}")
    return text


def to_arch(hf: dict[str, Any]) -> ArchConfig:
    """config.json of an NV-Embed checkpoint → the backbone's ArchConfig (bidirectional Mistral)."""
    return llama.to_arch({**_text_config(hf), "model_type": "mistral", "is_causal": False})


def pooler(hf: dict[str, Any]) -> LatentAttentionPooler:
    """The latent-attention pooler described by `latent_attention_config` (parameters uninitialized)."""
    latent = LATENT_DEFAULTS | (hf.get("latent_attention_config") or {})
    hidden = _text_config(hf)["hidden_size"]
    if not latent["latent_dim"] == latent["hidden_dim"] == hidden:
        raise UnsupportedConfig(
            f"nvembed: latent_attention_config latent_dim {latent['latent_dim']} and hidden_dim "
            f"{latent['hidden_dim']} must both equal text_config hidden_size {hidden} (the remote code runs only then)"
        )
    masks_instruction = flag(hf, "is_mask_instruction", True) and hf.get("padding_side", "right") == "right"
    return LatentAttentionPooler(
        hidden,
        num_latents=latent["num_latents_value"],
        num_heads=latent["num_cross_heads"],
        head_dim=latent["cross_dim_head"],
        intermediate_size=FEED_FORWARD_MULT * hidden,
        include_prompt=not masks_instruction,
        output_normalize=flag(latent, "output_normalize", True),
    )


POOLER_PREFIX = r"^latent_attention_model\."
BLOCK = POOLER_PREFIX + r"cross_attend_blocks\."
WB = r"\.(?P<p>weight|bias)$"
POOLER_WEIGHTS = [
    Rule(POOLER_PREFIX + r"latents$", "latents"),
    Rule(BLOCK + r"0\.norm" + WB, "norm_attn.{p}"),
    Rule(BLOCK + r"0\.norm_context" + WB, "norm_latents.{p}"),
    Rule(BLOCK + r"0\.fn\.to_(?P<n>q|kv|out)\.weight$", "attn.{n}.weight"),
    Rule(BLOCK + r"1\.norm" + WB, "norm_mlp.{p}"),
    Rule(BLOCK + r"1\.fn\.net\.0" + WB, "mlp.up.{p}", reorder=(1, 0)),  # GEGLU's [x; gate] → [gate; up]
    Rule(BLOCK + r"1\.fn\.net\.2" + WB, "mlp.down.{p}"),
]
WEIGHTS = [*llama.weights(r"^embedding_model\."), Drop(POOLER_PREFIX)]  # the pooler's keys: POOLER_WEIGHTS
HEADS = {"nvembed": []}
