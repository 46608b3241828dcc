"""Gemma 2 and Gemma 3 text (bge-multilingual-gemma2, EmbeddingGemma): `gemma.py`'s config translation
(its docstring lists the quirks) with the sandwich-norm weight table. A family of its own only because
load_backbone takes one weight table per family and post_attention_layernorm names a different norm here
(after attention, → `norm_attn_out`) than in Gemma 1 (before the MLP).
"""

from __future__ import annotations

from embzoo.conversion.families import gemma

MODEL_TYPES = ("gemma2", "gemma3_text")
to_arch = gemma.to_arch
FLOAT16_OVERFLOWS = gemma.FLOAT16_OVERFLOWS
NEEDS_RECIPE = gemma.NEEDS_RECIPE
WEIGHTS = gemma.weights(sandwich=True)
HEADS = {t: [] for t in MODEL_TYPES}
