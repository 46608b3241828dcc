"""`embzoo export --format sentence-transformers`: an embedder written as a folder in sentence-transformers' legacy
layout, which sentence-transformers, TEI and vLLM all read.

The folder: config.json and model.safetensors in transformers' own layout (embzoo.conversion.native), the
tokenizer files, sentence_bert_config.json, modules.json with "sentence_transformers.models.*" type strings,
1_Pooling (the boolean pooling_mode_* keys), one N_Dense folder per Dense layer, Normalize when the model
normalizes, and config_sentence_transformers.json with the prompts. The weights are those embzoo runs (a LoRA
adapter merged at load is in them), in the dtype asked for (default: the checkpoint's).

Only what the layout runs exactly is written. Refused, with everything unsupported named: rerankers, models whose
main output is not one vector per text (ColBERT, SPLADE), learned poolers (NV-Embed), task LoRA
(jina-embeddings-v3), layer norm before Matryoshka truncation (nomic-embed v1.5), an end token or text suffix that
embzoo appends, instruction masking other than the prompt's tokens, a recipe that changes config.json's
architecture (gte-Qwen2's bidirectional attention), pooling modes in an order the boolean keys cannot state, and
checkpoints that transformers' own classes do not read (remote-code layouts). BGE-M3's sparse and multi-vector
heads are left out: the folder holds its dense vectors, as the BGE-M3 repository's own sentence-transformers
files do. An instruction template is not written either (sentence-transformers has none); the prompts keep the
default instructions.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from embzoo import catalog
from embzoo.api import Embedder
from embzoo.conversion.native import NativeLayout, native_layout, native_weights
from embzoo.conversion.peft import adapter_snapshot, is_adapter
from embzoo.conversion.snapshot import LEGACY_POOLING_KEYS, Snapshot, read_snapshot, resolve
from embzoo.loading import load
from embzoo.modeling.pooling import Pooler
from embzoo.registry import family_for
from embzoo.reranker import Ranker

ST_MODELS = "sentence_transformers.models."
POOLING_KEYS = {mode: key for key, mode in LEGACY_POOLING_KEYS.items()}  # in sentence-transformers' order
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "chat_template.jinja",
)


class ExportError(ValueError):
    """The model cannot be written in the asked format; the message names what is unsupported."""


@dataclass(frozen=True)
class Exported:
    """What export_sentence_transformers wrote."""

    folder: Path
    architecture: str  # transformers' class in config.json
    dtype: str
    modules: tuple[str, ...]  # modules.json's module kinds, in order
    dimension: int
    max_seq_length: int
    prompts: tuple[str, ...]
    left_out: tuple[str, ...]  # what the model has that the folder does not hold

    def summary(self) -> str:
        """One paragraph for the command line."""
        prompts = f"prompts {', '.join(self.prompts)}" if self.prompts else "no prompts"
        left = f" Not written: {'; '.join(self.left_out)}." if self.left_out else ""
        return (
            f"Wrote a sentence-transformers folder to {self.folder}: {self.architecture} weights in {self.dtype} "
            f"(model.safetensors, transformers' names), config.json, tokenizer files, modules "
            f"{' → '.join(self.modules)}, {self.dimension}-d vectors, max_seq_length {self.max_seq_length}, "
            f"{prompts}. Load it with SentenceTransformer('{self.folder}'), TEI or vLLM.{left}"
        )


def export_sentence_transformers(
    src: str | Path | None,
    dst: str | Path,
    *,
    recipe: str | None = None,
    dtype: str | None = None,
) -> Exported:
    """Write the embedder `src` (a Hub id or folder; None: the bundled MiniLM) to the new folder `dst` in
    sentence-transformers' legacy layout, loaded as embzoo.load(src, recipe=recipe) does, weights in `dtype`
    (float32, float16, bfloat16; None: config.json's dtype, else float32). ExportError names everything the layout
    cannot express; NotNative (a ValueError) lists the tensors transformers' class would not read."""
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ExportError(f"{dst} exists and is not an empty folder; export into a new folder")
    root = catalog.bundled_model_path() if src is None else resolve(src)
    snap = adapter_snapshot(root)[0] if is_adapter(root) else read_snapshot(root)
    layout = native_layout(snap.config)
    dtype = dtype or snap.stated_dtype
    model = load(src, device="cpu", dtype=dtype, recipe=recipe)
    if isinstance(model, Ranker):
        raise ExportError(
            f"{src} is a reranker ({type(model).__name__}); the sentence-transformers layout holds embedders"
        )
    unsupported = _unexpressible(model, snap, layout)
    if unsupported:
        raise ExportError(
            f"{src}: the sentence-transformers layout cannot express " + "; ".join(unsupported) + ". Use embzoo with "
            "this model as it is"
        )
    weights = native_weights(snap, model.model.backbone, layout)
    dst.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in snap.config.items() if k not in ("auto_map", "torch_dtype")}
    _write_json(dst / "config.json", config | {"architectures": [layout.class_name], "dtype": dtype})
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        if (snap.model_dir / name).is_file():
            shutil.copy(snap.model_dir / name, dst / name)
    modules = _write_modules(model, dst)
    left_out = []
    if heads := [name for name in model.model.outputs if name in ("multivector", "sparse")]:
        left_out.append(f"the {' and '.join(heads)} heads (BGE-M3's; the folder gives the dense vectors)")
    if model.instruction_template:
        left_out.append(f"the instruction template {model.instruction_template!r} (the prompts keep its defaults)")
    return Exported(
        dst,
        layout.class_name,
        dtype,
        modules,
        model.dimension,
        model.max_seq_length,
        tuple(model.prompts),
        tuple(left_out),
    )


def _unexpressible(model: Embedder, snap: Snapshot, layout: NativeLayout) -> list[str]:
    """What `model` does that the sentence-transformers layout (with transformers' `layout` class) does not."""
    out = []
    pooler = model.model.pooler
    if model.model.outputs[0] != "sentence":
        out.append(f"{model.model.outputs[0]} vectors as the main output (ColBERT, SPLADE)")
    elif not isinstance(pooler, Pooler):
        out.append(f"a learned pooler ({type(pooler).__name__})")
    elif pooler.modes != tuple(m for m in POOLING_KEYS if m in pooler.modes):
        out.append(
            f"pooling modes {pooler.modes} in this order (sentence-transformers concatenates {tuple(POOLING_KEYS)})"
        )
    if model.instruction_mask != "prompt":
        out.append(f"instruction masking {model.instruction_mask!r} (include_prompt=False leaves out the prompt only)")
    if model.tokenizer.end_id is not None:
        token = model.tokenizer.backend.id_to_token(model.tokenizer.end_id)
        out.append(f"the end token {token!r} embzoo appends to every input (its tokenizer does not add it)")
    if model.text_suffix:
        out.append(f"the suffix {model.text_suffix!r} appended to every text")
    if model.matryoshka_layer_norm:
        out.append("the layer norm before Matryoshka truncation")
    backbone = model.model.backbone
    if backbone.task_lora is not None:
        out.append("task LoRA adapters (convert them with `embzoo convert --lora-to-peft`)")
    stated = family_for(snap.config).to_arch(snap.config)
    changed = [f.name for f in fields(stated) if getattr(stated, f.name) != getattr(backbone.cfg, f.name)]
    if changed and backbone.task_lora is None:
        out.append(f"the recipe's change to config.json's architecture ({', '.join(changed)})")
    if layout.causal is not None and layout.causal != backbone.cfg.causal:
        direction = "causal" if layout.causal else "bidirectional"
        out.append(f"{'bidirectional' if layout.causal else 'causal'} attention ({layout.class_name} runs {direction})")
    return out


def _write_modules(model: Embedder, dst: Path) -> tuple[str, ...]:
    """modules.json, sentence_bert_config.json (the Transformer's settings), the folder of each later module and
    config_sentence_transformers.json (prompts, similarity, truncate_dim); returns the module kinds in order."""
    backbone = model.model.backbone
    _write_json(
        dst / "sentence_bert_config.json",
        {"max_seq_length": model.max_seq_length, "do_lower_case": model.tokenizer.lowercase},
    )
    pooler = model.model.pooler
    pooling = {"word_embedding_dimension": backbone.cfg.hidden_size}
    pooling |= {key: mode in pooler.modes for mode, key in POOLING_KEYS.items()}
    modules = [("Transformer", "", None), ("Pooling", "1_Pooling", pooling | {"include_prompt": pooler.include_prompt})]
    dtype = next(backbone.parameters()).dtype
    for dense in model.model.dense:
        folder = dst / f"{len(modules)}_Dense"
        folder.mkdir()
        linear, act = dense.linear, type(dense.act)
        save_file(
            {f"linear.{n}": t.to(dtype) for n, t in linear.state_dict().items()}, str(folder / "model.safetensors")
        )
        config = dict(
            in_features=linear.in_features,
            out_features=linear.out_features,
            bias=linear.bias is not None,
            activation_function=f"{act.__module__}.{act.__qualname__}",
        )
        modules.append(("Dense", folder.name, config))
    if model.normalize:
        modules.append(("Normalize", f"{len(modules)}_Normalize", None))
    entries = []
    for i, (kind, path, config) in enumerate(modules):
        entries.append({"idx": i, "name": str(i), "path": path, "type": ST_MODELS + kind})
        if path:
            (dst / path).mkdir(exist_ok=True)
        if config is not None:
            _write_json(dst / path / "config.json", config)
    _write_json(dst / "modules.json", entries)
    settings = {
        "prompts": model.prompts,
        "default_prompt_name": model.default_prompt_name,
        "similarity_fn_name": model.origin.snapshot.pipeline.similarity_fn_name or "cosine",
    }
    if model.truncate_dim is not None:
        settings["truncate_dim"] = model.truncate_dim
    _write_json(dst / "config_sentence_transformers.json", settings)
    return tuple(kind for kind, _, _ in modules)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
