"""embzoo.load: a hub id or folder → a ready Embedder (snapshot + catalog + conversion)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from embzoo import catalog
from embzoo.api import Embedder
from embzoo.config import UnsupportedConfig
from embzoo.conversion.load import is_classifier, load_backbone, load_dense
from embzoo.conversion.snapshot import PipelineSpec, read_snapshot, resolve
from embzoo.modeling.embedding_model import EmbeddingModel
from embzoo.modeling.pooling import Pooler
from embzoo.tokenization import TextTokenizer

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {sorted(DTYPES)}")
    return DTYPES[dtype]


def _max_seq_length(stated: int | None, pipe: PipelineSpec, entry: catalog.CatalogEntry | None, positions: int) -> int:
    """The truncation length: stated (argument or sentence_bert_config.json) exactly, else the
    tokenizer's model_max_length or the catalog's, capped at what the position table covers."""
    if stated is None:
        return min(pipe.tokenizer_max_length or (entry.max_seq_length if entry else positions), positions)
    if stated > positions:
        raise ValueError(
            f"max_seq_length {stated} exceeds the model's position limit {positions}; "
            f"pass embzoo.load(..., max_seq_length={positions}) or less"
        )
    return stated


def load(
    name_or_path: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    attn_backend: str | None = None,
    max_seq_length: int | None = None,
) -> Embedder:
    """Load an embedding checkpoint: a Hub id, a local snapshot folder, or None for the bundled
    all-MiniLM-L6-v2. device defaults to CUDA when present; dtype to bfloat16 on CUDA, float32 on CPU.
    """
    entry = catalog.lookup(None if name_or_path is None else str(name_or_path))
    root = catalog.bundled_model_path() if name_or_path is None else resolve(name_or_path, revision)
    snap = read_snapshot(root)
    if is_classifier(snap.config):
        raise UnsupportedConfig(
            f"{root} is a sequence-classification checkpoint ({snap.config.get('architectures')}), "
            "i.e. a cross-encoder/reranker: embzoo.load returns embedders; rerankers are not available yet"
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone, _ = load_backbone(snap, attn_backend=attn_backend, dtype=_dtype(dtype, device), device=device)
    pipe = snap.pipeline
    pooling = pipe.pooling or (entry.pooling if entry else None)
    if pooling is None:
        log.warning("%s has no sentence-transformers Pooling config and no catalog entry: mean pooling", root)
        pooling = ("mean",)
    normalize = pipe.normalize if pipe.normalize is not None else bool(entry and entry.normalize)
    prompts = {**(entry.prompts if entry else {}), **pipe.prompts}
    limit = _max_seq_length(max_seq_length or pipe.max_seq_length, pipe, entry, backbone.max_seq_len)
    model = EmbeddingModel(
        backbone,
        Pooler(pooling, pipe.include_prompt),
        [load_dense(d, device=device) for d in pipe.dense],
    )
    tokenizer = TextTokenizer.from_folder(snap.model_dir, limit, lowercase=pipe.do_lower_case)
    name = str(name_or_path) if name_or_path is not None else catalog.DEFAULT_MODEL
    return Embedder(
        model,
        tokenizer,
        normalize=normalize,
        prompts=prompts,
        default_prompt_name=pipe.default_prompt_name,
        matryoshka_layer_norm=bool(entry and entry.matryoshka_layer_norm),
        name=name,
    )
