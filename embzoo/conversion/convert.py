"""`embzoo convert`: a checkpoint as an embzoo folder (convert_model), or task LoRA rewritten as standard PEFT
adapters (convert_lora_to_peft, see embzoo.conversion.task_lora_peft).

An embzoo folder is the source folder with its weights rewritten: config.json says model_type "embzoo" and keeps
the source's config.json, the ArchConfig and the catalog recipe in its "embzoo" section; model.safetensors holds the
backbone (and a classification head, or a yes/no reranker's score row) under embzoo's own names, fused and in the
chosen dtype, and every other checkpoint tensor (heads other loaders read: SPLADE's MLM head, NV-Embed's pooler, a
listwise projector, Stanford ColBERT's linear) under its own name as stored. embzoo.load reads it through the same
code as the source (embzoo.conversion.load.CONVERTED_BACKBONE), so the outputs are bit-identical.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import save_file

from embzoo.conversion.load import load_backbone, weight_rules
from embzoo.conversion.rules import Drop, Rule
from embzoo.conversion.score_row import CONVERTED_ROW
from embzoo.conversion.snapshot import (
    CONVERTED_FORMAT,
    CONVERTED_TYPE,
    Snapshot,
    read_snapshot,
    read_weights,
    resolve,
    weight_files,
)
from embzoo.conversion.task_lora_peft import expand, write_task_adapters
from embzoo.modeling.sparse import SpladeSparse
from embzoo.registry import family_for


def convert_lora_to_peft(src: str | Path, dst: Path, base_model: str) -> list[Path]:
    """Write one PEFT LoRA folder per task of the task-LoRA checkpoint `src` (a folder or Hub id) under `dst`,
    for the family's transformers-native model (`base_model` is their base_model_name_or_path); returns the
    folders written. ValueError for a checkpoint without task LoRA or a family without a native PEFT table."""
    snap = read_snapshot(resolve(src))
    modules = getattr(family_for(snap.config), "PEFT_TASK_MODULES", None)
    backbone, _ = load_backbone(snap, with_head=False)
    if modules is None or backbone.task_lora is None:
        raise ValueError(
            f"{src} has no task LoRA adapters to convert: --lora-to-peft takes a jina-embeddings-v3 checkpoint "
            "(its original layout, with lora_adaptations in config.json)"
        )
    return write_task_adapters(backbone, expand(modules, backbone.cfg.num_layers), dst, base_model)


# what `embzoo convert` copies: configuration, tokenizer and head files (not READMEs: a card describes the source);
# not the checkpoint's own weights (any format), ONNX/OpenVINO exports, VCS folders or a merged PEFT adapter
COPIED = ("*.json", "*.txt", "*.model", "*.safetensors", "*.bin", "*.pt", "artifact.metadata")
MODEL_WEIGHTS = re.compile(r"^(?:model|pytorch_model|tf_model|flax_model)\b[-.\w]*$")
SKIPPED_DIRS = {"onnx", "openvino", ".git", ".cache"}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"}
CANONICAL_PREFIXES = ("backbone.", "head.")  # the module's own names (embzoo.conversion.load.CONVERTED_BACKBONE)


@dataclass(frozen=True)
class ConvertSummary:
    """What `embzoo convert` wrote (its str is the printed summary)."""

    folder: Path
    family: str
    kind: str  # the loaded class: Embedder, Reranker, ListwiseReranker
    parameters: int
    outputs: str  # the embedder's outputs and dimension, or the reranker's score
    dtype: str
    canonical: int  # tensors stored under embzoo's names
    kept: tuple[str, ...]  # checkpoint tensors kept under their own names (the heads their loaders read)
    copied: tuple[str, ...]  # files copied as they are (tokenizer, sentence-transformers modules, head files)

    def __str__(self) -> str:
        kept = ", ".join(self.kept[:6]) + (f" … (+{len(self.kept) - 6})" if len(self.kept) > 6 else "")
        copied = ", ".join(self.copied[:8]) + (" …" if len(self.copied) > 8 else "")
        head = f"wrote {self.folder}: {self.kind} of family {self.family}, {self.parameters:,} parameters, {self.dtype}"
        return "\n".join(
            [
                head,
                f"  outputs: {self.outputs}",
                f"  converted: {self.canonical} tensors under embzoo names (backbone fused and renamed)",
                f"  kept as stored: {len(self.kept)} tensors{': ' + kept if kept else ''}",
                f"  copied: {len(self.copied)} files ({copied})",
            ]
        )


def convert_model(
    src: str | Path,
    dst: str | Path,
    *,
    dtype: str = "float32",
    recipe: str | None = None,
    revision: str | None = None,
    adapters: Sequence[str | Path] = (),
    config_overrides: dict[str, Any] | None = None,
) -> ConvertSummary:
    """Write `src` (a folder or Hub id that embzoo.load takes; `adapters` merged, `config_overrides` applied, as
    embzoo.load does) as an embzoo folder `dst` that embzoo.load reloads bit-exactly: config.json {"model_type":
    "embzoo", "embzoo": {source config, ArchConfig, recipe, dtype}}, model.safetensors with the backbone (and
    classification head, or a yes/no score row) under embzoo's names in `dtype` and the checkpoint's tensors that
    other loaders read as stored, and the folder's configuration, tokenizer and head files copied."""
    from embzoo.loading import load  # the package's loader imports this module's siblings

    out = Path(dst)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; give a new or empty folder")
    if isinstance(adapters, str | Path | dict):
        raise TypeError("adapters are merged into the converted weights: pass a list of adapter folders or Hub ids")
    model = load(
        src, device="cpu", dtype=dtype, recipe=recipe, revision=revision, adapters=adapters,
        config_overrides=config_overrides,
    )  # fmt: skip
    snap = model.origin.snapshot
    if snap.converted is not None:
        raise ValueError(f"{src} is already an embzoo folder; copy it instead")
    module = model.model if hasattr(model, "model") else model.scorer
    state = {k: v for k, v in module.state_dict().items() if k.startswith(CANONICAL_PREFIXES) or k == CONVERTED_ROW}
    family = family_for(snap.config)
    with_head = any(k.startswith("head.") for k in state)  # an embedder keeps an unused head's tensors as stored
    claimed = [r for r in weight_rules(family, snap.config, with_head) if isinstance(r, Rule)]
    discarded = [r for r in family.WEIGHTS if isinstance(r, Drop)]
    read_apart = _read_apart(family, module)
    kept, renamed = {}, {}
    for file in weight_files(snap.weights_dir or snap.model_dir):
        claims = {n: any(r.match(n) for r in claimed) for n in file.shapes}
        names = [
            n
            for n in file.shapes
            if not claims[n] and (not any(r.match(n) for r in discarded) or any(r.match(n) for r in read_apart))
        ]
        kept |= dict(read_weights(file, names))
        renamed |= {n: list(s) for n, s in file.shapes.items() if claims[n]}
    model_dir = out / snap.model_dir.relative_to(snap.root)
    copied = _copy_side_files(snap, out)
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in {**kept, **state}.items()}
    save_file(
        tensors, model_dir / "model.safetensors", metadata={"format": "pt", "embzoo_format": str(CONVERTED_FORMAT)}
    )
    section = {
        "format": CONVERTED_FORMAT,
        "source": str(src),
        "recipe": model.origin.recipe,
        "dtype": dtype,
        "config": snap.config,
        "arch": module.backbone.cfg.to_dict(),
        "renamed": renamed,  # the source tensors now under embzoo's names: {name: shape} (export inverts the rules)
    }
    config = {"model_type": CONVERTED_TYPE, "architectures": ["EmbzooModel"], CONVERTED_TYPE: section}
    text = json.dumps(config, indent=2) + "\n"
    (model_dir / "config.json").write_text(text, encoding="utf-8")
    if model_dir != out:  # transformers' Auto classes read the root's config.json
        (out / "config.json").write_text(text, encoding="utf-8")
    return ConvertSummary(
        folder=out,
        family=family.__name__.rsplit(".", 1)[-1],
        kind=type(model).__name__,
        parameters=sum(p.numel() for p in module.parameters()),
        outputs=_outputs(model),
        dtype=dtype,
        canonical=len(state),
        kept=tuple(sorted(kept)),
        copied=tuple(copied),
    )


def _read_apart(family: ModuleType, module: torch.nn.Module) -> list[Rule]:
    """The rules of the tables that read this model's other checkpoint tensors, among those its family's WEIGHTS
    drop: a learned pooler's (NV-Embed) and a SPLADE masked-LM head's."""
    rules = list(getattr(family, "POOLER_WEIGHTS", []))
    if isinstance(getattr(module, "sparse", None), SpladeSparse):
        rules += [*family.MLM_WEIGHTS, *family.MLM_TIED, *family.MLM_UNTIED]
    return [r for r in rules if isinstance(r, Rule)]


def _outputs(model: Any) -> str:
    if hasattr(model, "model"):
        return f"{', '.join(model.model.outputs)} (main: {model.model.outputs[0]}, dimension {model.dimension})"
    return f"one relevance score per (query, document) pair, activation {model.activation}"


def _copy_side_files(snap: Snapshot, out: Path) -> list[str]:
    """Copy the snapshot's configuration, tokenizer and head files (COPIED patterns) except its weights, its
    config.json (rewritten) and merged adapters; returns the copied paths relative to the snapshot root."""
    weight_dirs = {snap.model_dir.resolve(), (snap.weights_dir or snap.model_dir).resolve()}
    skip = {(snap.model_dir / "config.json").resolve()} | {(snap.root / n).resolve() for n in ADAPTER_FILES}
    copied = []
    for path in sorted(snap.root.rglob("*")):
        rel = path.relative_to(snap.root)
        parents = [snap.root / Path(*rel.parts[: i + 1]) for i in range(len(rel.parts) - 1)]
        if any(p.name in SKIPPED_DIRS or (p / "adapter_config.json").is_file() for p in parents):
            continue
        if path.is_dir() or path.resolve() in skip or not any(fnmatch(path.name, p) for p in COPIED):
            continue
        if path.parent.resolve() in weight_dirs and MODEL_WEIGHTS.match(path.name):
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out / rel)
        copied.append(str(rel))
    return copied
