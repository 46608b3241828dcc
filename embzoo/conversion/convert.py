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
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from embzoo.conversion.load import load_backbone, weight_rules
from embzoo.conversion.rules import Rule
from embzoo.conversion.score_row import CONVERTED_ROW
from embzoo.conversion.snapshot import (
    CONVERTED_TYPE,
    WEIGHT_FILES,
    Snapshot,
    read_snapshot,
    read_weights,
    resolve,
    weight_files,
)
from embzoo.conversion.task_lora_peft import expand, write_task_adapters
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


# what `embzoo convert` leaves behind: ONNX/OpenVINO exports and VCS folders; a PEFT adapter (merged into the weights)
SKIPPED_DIRS = {"onnx", "openvino", ".git", ".cache"}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"}
CONVERTED_FORMAT = 1
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
    src: str | Path, dst: str | Path, *, dtype: str = "float32", recipe: str | None = None, revision: str | None = None
) -> ConvertSummary:
    """Write `src` (a folder or Hub id that embzoo.load takes) as an embzoo folder `dst` that embzoo.load reloads
    bit-exactly: config.json {"model_type": "embzoo", "embzoo": {source config, ArchConfig, recipe, dtype}},
    model.safetensors with the backbone (and classification head, or a yes/no score row) under embzoo's names in
    `dtype` and the checkpoint's other tensors as stored, and every other file of the folder copied."""
    from embzoo.loading import load  # the package's loader imports this module's siblings

    model = load(src, device="cpu", dtype=dtype, recipe=recipe, revision=revision)
    snap = model.origin.snapshot
    if snap.converted is not None:
        raise ValueError(f"{src} is already an embzoo folder; copy it instead")
    out = Path(dst)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; give a new or empty folder")
    module = model.model if hasattr(model, "model") else model.scorer
    state = {k: v for k, v in module.state_dict().items() if k.startswith(CANONICAL_PREFIXES) or k == CONVERTED_ROW}
    family = family_for(snap.config)
    with_head = any(k.startswith("head.") for k in state)  # an embedder keeps an unused head's tensors as stored
    claimed = [r for r in weight_rules(family, snap.config, with_head) if isinstance(r, Rule)]
    files = weight_files(snap.weights_dir or snap.model_dir)
    kept, renamed = {}, {}
    for file in files:
        names = [n for n in file.shapes if not any(r.match(n) for r in claimed)]
        kept |= dict(read_weights(file, names))
        renamed |= {n: list(s) for n, s in file.shapes.items() if n not in names}
    model_dir = out / snap.model_dir.relative_to(snap.root)
    copied = _copy_side_files(snap, out)
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in {**kept, **state}.items()}
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt", "embzoo_format": "1"})
    backbone = module.backbone
    section = {
        "format": CONVERTED_FORMAT,
        "source": str(src),
        "recipe": model.origin.recipe,
        "dtype": dtype,
        "config": snap.config,
        "arch": backbone.cfg.to_dict(),
        "renamed": renamed,  # the source tensors now under embzoo's names: {name: shape} (export inverts the rules)
    }
    config = {"model_type": CONVERTED_TYPE, "architectures": ["EmbzooModel"], CONVERTED_TYPE: section}
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
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


def _outputs(model: Any) -> str:
    if hasattr(model, "model"):
        return f"{', '.join(model.model.outputs)} (main: {model.model.outputs[0]}, dimension {model.dimension})"
    return f"one relevance score per (query, document) pair, activation {model.activation}"


def _copy_side_files(snap: Snapshot, out: Path) -> list[str]:
    """Copy every file of the snapshot except its weights, its config.json (rewritten) and merged adapters; returns
    the copied paths relative to the snapshot root."""
    weights = {p.resolve() for f in weight_files(snap.weights_dir or snap.model_dir) for p in [f.path]}
    weights |= {(snap.model_dir / n).resolve() for n in WEIGHT_FILES}
    skip = weights | {(snap.model_dir / "config.json").resolve()} | {(snap.root / n).resolve() for n in ADAPTER_FILES}
    copied = []
    for path in sorted(snap.root.rglob("*")):
        rel = path.relative_to(snap.root)
        parents = [snap.root / Path(*rel.parts[: i + 1]) for i in range(len(rel.parts) - 1)]
        if any(p.name in SKIPPED_DIRS or (p / "adapter_config.json").is_file() for p in parents):
            continue
        if path.is_dir() or path.resolve() in skip:
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out / rel)
        copied.append(str(rel))
    return copied
