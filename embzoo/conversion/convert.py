"""`embzoo convert`: task LoRA rewritten as standard PEFT adapters (see embzoo.conversion.task_lora_peft)."""

from __future__ import annotations

from pathlib import Path

from embzoo.conversion.load import load_backbone
from embzoo.conversion.snapshot import read_snapshot, resolve
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
