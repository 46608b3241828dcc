"""embzoo.load: a hub id or folder → a ready Embedder, or a Reranker for a cross-encoder (snapshot + catalog +
conversion)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from embzoo import catalog
from embzoo.api import Embedder
from embzoo.conversion.load import (
    check_max_seq_length,
    is_classifier,
    load_backbone,
    load_dense,
    load_pooler,
    weight_targets,
)
from embzoo.conversion.output_heads import (
    STANFORD_LINEAR,
    bge_m3_heads,
    colbert_head,
    is_bge_m3,
    is_colbert,
    is_stanford_colbert,
    late_interaction,
    splade_head,
)
from embzoo.conversion.peft import adapter_snapshot, is_adapter, lora_transform
from embzoo.conversion.rules import Drop
from embzoo.conversion.snapshot import PipelineSpec, Snapshot, read_snapshot, resolve
from embzoo.cross_encoder import check_classifier, cross_encoder
from embzoo.loading_rerankers import load_reranker
from embzoo.modeling.backbone import Backbone
from embzoo.modeling.embedding_model import EmbeddingModel
from embzoo.modeling.named_lora import NamedLoRA
from embzoo.modeling.pooling import Pooler
from embzoo.modeling.quantized_linear import quantize_linears
from embzoo.registry import family_for
from embzoo.reranker import Ranker
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
    check_max_seq_length(stated, positions)
    return stated


def load(
    name_or_path: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    attn_backend: str | None = None,
    max_seq_length: int | None = None,
    recipe: str | None = None,
    config_overrides: dict[str, Any] | None = None,
    adapters: Sequence[str | Path] | Mapping[str, str | Path] = (),
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    load_in_fp8: bool = False,
) -> Embedder | Ranker:
    """Load an embedding checkpoint: a Hub id, a local snapshot folder, or None for the bundled
    all-MiniLM-L6-v2. device defaults to CUDA when present; dtype to bfloat16 on CUDA, float32 on CPU.
    A *ForSequenceClassification checkpoint (a cross-encoder) loads as a Reranker (see embzoo.cross_encoder).

    recipe: the catalog id whose recipe (prompts, instruction template, EOS, pooling, attention
    overrides) applies, for a local copy of a catalogued model (default: name_or_path's own entry).
    config_overrides: config.json values to replace before conversion (e.g. {"is_causal": False}).
    A PEFT LoRA adapter folder loads its base model (following base_model_name_or_path, see
    embzoo.conversion.peft) with the adapters merged; `adapters` (folders or Hub ids) are merged on top, in order.
    A dict of adapters, {name: folder or Hub id}, keeps each apart from the weights instead (LoRA trained on this
    base, e.g. Qwen3-Embedding): encode(adapter=name) selects one per call, Embedder.merge_adapter(name) merges
    one for good (embedders only, not with 8/4-bit loading; see embzoo.modeling.named_lora).
    load_in_8bit (LLM.int8(); dtype then defaults to float16) or load_in_4bit (NF4) quantize the blocks' Linear
    weights with bitsandbytes (see embzoo.modeling.quantized_linear); everything else runs in dtype.
    load_in_fp8 (opt-in; GPUs of compute capability 8.9+, e.g. H100) makes them e4m3 with per-channel weight scales
    and per-token activation scales (embzoo.modeling.fp8_linear); dtype bfloat16, the default then.
    A catalogued generative yes/no reranker (Qwen3-Reranker, mxbai-rerank-v2, bge-reranker-v2-gemma; a local copy
    with recipe=<its hub id>) loads as a Reranker, jina-reranker-v3 (listwise) as a ListwiseReranker (see
    embzoo.loading_rerankers); max_seq_length is then a pair's tokens, or what one block prompt fills.
    ColBERT (PyLate or Stanford layout), SPLADE and BGE-M3 checkpoints load as Embedders with multi-vector and sparse
    outputs (see embzoo.conversion.output_heads); a ColBERT model's max_seq_length is its document length.
    """
    if isinstance(adapters, str | Path):
        raise TypeError(f"adapters must be a list of adapter folders or Hub ids; got one: use adapters=[{adapters!r}]")
    named = dict(adapters) if isinstance(adapters, Mapping) else {}
    flags = {"8bit": load_in_8bit, "nf4": load_in_4bit, "fp8": load_in_fp8}
    if sum(flags.values()) > 1:
        raise ValueError(
            "load_in_8bit, load_in_4bit and load_in_fp8 are exclusive: pass one of them (8-bit int8, 4-bit NF4 or FP8)"
        )
    quantize = next((mode for mode, on in flags.items() if on), None)  # a quantized_linear mode
    if named and quantize:
        raise ValueError(
            "named adapters (adapters={name: folder}) run beside full-precision weights, not 8/4-bit or FP8 ones; "
            "merge them at load instead (adapters=[folder, ...]) or load without quantization"
        )
    entry = catalog.lookup(recipe if recipe is not None else None if name_or_path is None else str(name_or_path))
    if recipe is not None and entry is None:
        raise ValueError(f"recipe {recipe!r} is not in the catalog; `embzoo list` shows the catalogued ids")
    if name_or_path is None and recipe not in (None, catalog.DEFAULT_MODEL):
        raise ValueError(
            f"recipe {recipe!r} applies to a local copy of that model: pass its folder too, "
            f"embzoo.load('/path/to/copy', recipe={recipe!r}) (without a model, load() uses the bundled MiniLM)"
        )
    root = catalog.bundled_model_path() if name_or_path is None else resolve(name_or_path, revision)
    snap, chain = adapter_snapshot(root) if is_adapter(root) else (read_snapshot(root), [])
    if snap.converted is not None:
        entry = entry or _stored_recipe(snap, root, bool(chain or (adapters and not named)), config_overrides)
    if entry is None and (entry := catalog.by_architecture(snap.config)) is not None:
        log.info("%s: its architectures identify %s; loading with its recipe", root, entry.hub_id)
    merge = lora_transform([*chain, *(resolve(a) for a in ([] if named else adapters))])
    overrides = {**(entry.config_overrides if entry else {}), **(config_overrides or {})}
    if overrides:
        snap = dataclasses.replace(snap, config={**snap.config, **overrides})
    if is_classifier(snap.config):
        check_classifier(snap.config)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    family = family_for(snap.config)
    if entry is None and getattr(family, "NEEDS_RECIPE", False):
        causal = any(a.endswith("ForCausalLM") for a in snap.config.get("architectures") or [])
        rerankers = f"; a causal LM may be a generative reranker: recipe= one of {catalog.reranker_recipes()}"
        log.warning(
            "%s: no catalog recipe for this %s model: its prompt template, end token, attention direction and "
            "pooled tokens are taken from its files alone; for a copy of a catalogued model pass "
            "recipe='<hub id>' (see `embzoo list`)%s",
            root,
            family.__name__.rsplit(".", 1)[-1],
            rerankers if causal else "",
        )
    dtype = _family_dtype(family, dtype, device, quantize, root)
    if named and (entry is not None and entry.reranker or is_classifier(snap.config)):
        raise ValueError(
            f"{root}: named adapters (adapters={{name: folder}}) are for embedders; merge a reranker's adapters at "
            "load instead: adapters=[folder, ...]"
        )
    if entry is not None and entry.reranker:  # embzoo.loading_rerankers
        if quantize:
            raise ValueError(
                f"{root}: 8/4-bit and FP8 loading quantize embedders and cross-encoders, not generative or listwise "
                f"rerankers ({entry.reranker}); load this one without it (dtype='bfloat16' or 'float16' saves memory)"
            )
        reranker = load_reranker(
            snap,
            entry,
            device=device,
            dtype=dtype,
            attn_backend=attn_backend,
            max_seq_length=max_seq_length,
            transform=merge,
            name=str(name_or_path),
        )
        merge.check()
        return _with_origin(reranker, snap, entry)
    backbone, head = load_backbone(  # quantized: on the host, then quantized and moved one block at a time
        snap,
        attn_backend=attn_backend,
        dtype=torch.float32 if quantize == "fp8" and snap.stated_dtype == "float32" else dtype,  # FP8: from fp32
        device="cpu" if quantize else device,
        transform=merge,
        ignore=[Drop(STANFORD_LINEAR)] if is_stanford_colbert(snap) else (),  # the ColBERT projection, read apart
    )
    merge.check()
    lora = _named_adapters(snap, backbone, named) if named else None
    pipe = snap.pipeline
    limit = _max_seq_length(max_seq_length or pipe.max_seq_length, pipe, entry, backbone.max_seq_len)
    if quantize and backbone.task_lora is not None:
        raise ValueError(f"{root}: 8/4-bit and FP8 loading drop task LoRA adapters; load this model without it")
    if quantize:  # block by block from the host: the device never holds every full weight
        backbone = quantize_linears(backbone, quantize, dtype, device)
    name = str(name_or_path) if name_or_path is not None else catalog.DEFAULT_MODEL
    if head is not None:
        ranker = cross_encoder(snap, backbone, head.to(device), limit, name, entry.activation if entry else "")
        return _with_origin(ranker, snap, entry)
    embedder = _embedder(
        snap, entry, backbone, limit, name, dtype=dtype, device=device, adapters=lora, stated_length=max_seq_length
    )
    return _with_origin(embedder, snap, entry)


@dataclass(frozen=True)
class Origin:
    """Where a loaded model came from (embzoo convert and export read it): its snapshot (config.json with the
    recipe's overrides applied) and the catalog recipe that applied, if any."""

    snapshot: Snapshot
    recipe: str | None


def _with_origin(model: Embedder | Ranker, snap: Snapshot, entry: catalog.CatalogEntry | None) -> Embedder | Ranker:
    model.origin = Origin(snap, entry.hub_id if entry is not None else None)
    return model


def _stored_recipe(
    snap: Snapshot, root: Path, merging: bool, config_overrides: dict[str, Any] | None
) -> catalog.CatalogEntry | None:
    """The catalog recipe an embzoo folder was converted with; refuses what its fixed weights and ArchConfig cannot
    take (adapters to merge, config overrides)."""
    if merging or config_overrides:
        what = "adapters=[...] to merge" if merging else "config_overrides"
        raise ValueError(
            f"{root} is an embzoo folder: its weights and ArchConfig are fixed, so {what} apply when converting: "
            "convert the source with them (embzoo.conversion.convert.convert_model(source, dst, ...)); named "
            "adapters (adapters={name: folder}) do load onto it"
        )
    recipe = snap.converted.get("recipe")
    if recipe is None:
        return None
    entry = catalog.lookup(recipe)
    if entry is None:
        raise ValueError(
            f"{root} was converted with the recipe {recipe!r}, which this embzoo's catalog lacks; pass another "
            "with embzoo.load(folder, recipe=...)"
        )
    return entry


def _named_adapters(snap: Snapshot, backbone: Backbone, folders: Mapping[str, str | Path]) -> NamedLoRA:
    """The named adapters, each one's LoRA placed on the backbone's Linear layers (see LoraMerge.place)."""
    placing = lora_transform([resolve(f) for f in folders.values()])
    placed = placing.place(weight_targets(snap, backbone))
    placing.check()
    lora = NamedLoRA(backbone)
    for name, factors in zip(folders, placed, strict=True):
        lora.add(name, {param.removesuffix(".weight"): f for param, f in factors.items()})
    return lora


def _family_dtype(
    family: ModuleType, dtype: str | torch.dtype | None, device: torch.device, quantize: str | None, root: Path
) -> torch.dtype:
    """The dtype to run in: as asked, else the device's default (8-bit: float16, bfloat16 for families whose
    activations overflow float16, which they refuse; FP8: bfloat16)."""
    overflows = getattr(family, "FLOAT16_OVERFLOWS", False)
    if quantize == "8bit" and dtype is None:  # LLM.int8() takes fp16 activations; bitsandbytes casts otherwise
        dtype = torch.bfloat16 if overflows else torch.float16
    if quantize == "fp8" and dtype is None:
        dtype = torch.bfloat16
    dtype = _dtype(dtype, device)
    if dtype is torch.float16 and overflows:
        raise ValueError(
            f"{root}: this model's activations overflow float16; load it with dtype='bfloat16' or 'float32'"
        )
    return dtype


def _embedder(
    snap: Snapshot,
    entry: catalog.CatalogEntry | None,
    backbone: Backbone,
    limit: int,
    name: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    adapters: NamedLoRA | None = None,
    stated_length: int | None = None,
) -> Embedder:
    """The Embedder around a loaded backbone: pooler (a family's learned one, or sentence-transformers'),
    Dense heads, multi-vector and sparse heads (embzoo.conversion.output_heads), tokenizer, and the recipe's
    prompts, instruction handling and normalization. stated_length: the caller's max_seq_length (a ColBERT
    model's document length)."""
    pipe = snap.pipeline
    end_token = entry.end_token if entry else ""
    tokenizer = TextTokenizer.from_folder(snap.model_dir, limit, lowercase=pipe.do_lower_case, end_token=end_token)
    recipe = dict(
        prompts={**(entry.prompts if entry else {}), **pipe.prompts},
        default_prompt_name=pipe.default_prompt_name or (entry.default_prompt_name if entry else None),
        matryoshka_layer_norm=bool(entry and entry.matryoshka_layer_norm),
        instruction_template=entry.instruction_template if entry else "",
        instruction_mask=entry.instruction_mask if entry else "prompt",
        text_suffix=entry.text_suffix if entry else "",
        task_instructions={**(entry.task_instructions if entry else {}), **snap.config.get("task_instructions", {})},
        name=name,
        adapters=adapters,
    )
    hidden = backbone.cfg.hidden_size
    if is_colbert(snap):
        check_max_seq_length(stated_length, backbone.max_seq_len)
        late = late_interaction(snap, lowercase=pipe.do_lower_case, document_length=stated_length)
        model = EmbeddingModel(backbone, None, multivector=colbert_head(snap, hidden, device=device))
        return Embedder(model, tokenizer, late=late, **recipe)
    if pipe.splade is not None or (entry is not None and entry.splade):
        model = EmbeddingModel(backbone, None, sparse=splade_head(snap, dtype=dtype, device=device))
        return Embedder(model, tokenizer, max_active_dims=pipe.max_active_dims, **recipe)
    learned = load_pooler(snap, dtype=dtype, device=device)  # a family's own pooler replaces sentence-transformers'
    pooling = pipe.pooling or (entry.pooling if entry else None)
    if pooling is None and learned is None:
        log.warning("%s has no sentence-transformers Pooling config and no catalog entry: mean pooling", snap.root)
        pooling = ("mean",)
    normalize = pipe.normalize if pipe.normalize is not None else bool(entry and entry.normalize)
    normalize = normalize or bool(learned is not None and learned.output_normalize)
    # a recipe that masks instructions its own way keeps them out of the pool
    include_prompt = pipe.include_prompt and (entry is None or entry.instruction_mask == "prompt")
    sparse, multivector = (
        bge_m3_heads(snap, hidden, backbone.cfg.vocab_size, device=device) if is_bge_m3(snap) else (None, None)
    )
    model = EmbeddingModel(
        backbone,
        learned if learned is not None else Pooler(pooling, include_prompt),
        [load_dense(d, device=device) for d in pipe.dense],
        sparse=sparse,
        multivector=multivector,
    )
    return Embedder(model, tokenizer, normalize=normalize, truncate_dim=pipe.truncate_dim, **recipe)
