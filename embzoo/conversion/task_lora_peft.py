"""Task LoRA ↔ one standard PEFT LoRA adapter folder per task (jina-embeddings-v3's transformers-native -hf layout).

A family names the modules of its transformers-native model that make up each embzoo module (`modules`:
embzoo module → native module names, several when embzoo fuses them along dim 0, e.g. q/k/v → qkv).
Per task t and embzoo module with native parts p (peft factors A_p, B_p, scaling s_p):
- Linear: the fused update is exact as one LoRA of rank Σ r_p: A = [A_p stacked], B = blockdiag(s_p · B_p).
- Embedding: peft stores lora_embedding_A [r, V], lora_embedding_B [D, r] (W += s · (B @ A)ᵀ) → TaskLoRA
  lora_A = Aᵀ, lora_B = s · Bᵀ.
Scalings are folded into B and every module is zero-padded to the largest rank R, so the TaskLoRA runs with
lora_rank = lora_alpha = R (scale 1); tasks without an adapter on a module get zero factors. Writing goes the other
way: each fused part shares the module's A and takes its rows of B, with r = the TaskLoRA rank and
lora_alpha = scale · r; a task's folder is its name with "." and "-" replaced by "_" (retrieval.query →
retrieval_query).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from safetensors.torch import save_file
from torch import nn

from embzoo.config import ArchConfig
from embzoo.conversion.peft import ADAPTER_CONFIG, check_config, is_adapter, module_scaling, read_tensors
from embzoo.conversion.rules import WeightMismatch
from embzoo.conversion.snapshot import read_json
from embzoo.modeling.backbone import Backbone

ADAPTER_KEY = re.compile(
    r"^base_model\.model\.(?P<module>.+)\.lora_(?:embedding_)?(?P<f>[AB])(?:\.default)?(?:\.weight)?$"
)
Modules = Mapping[str, Sequence[str]]  # embzoo module ("layers.{i}.attn.qkv") → native parts, "{i}" per layer


def task_folder(task: str) -> str:
    """The folder (and peft adapter name) of `task`: dots and dashes become underscores."""
    return re.sub(r"[.-]", "_", task)


def expand(modules: Modules, layers: int) -> dict[str, list[str]]:
    """`modules` with "{i}" filled for every layer (templates without it once)."""
    out = {}
    for target, parts in modules.items():
        for i in range(layers) if "{i}" in target else (0,):
            out[target.format(i=i)] = [p.format(i=i) for p in parts]
    return out


@dataclass(frozen=True)
class TaskAdapters:
    """Stacked TaskLoRA factors read from per-task PEFT folders: `state` maps "<module>.lora_A/B" to
    [K, …] float32 tensors of rank `rank`; the TaskLoRA runs with lora_rank = lora_alpha = rank."""

    tasks: tuple[str, ...]
    rank: int
    state: dict[str, torch.Tensor]


def read_task_adapters(family: ModuleType, folder: Path, arch: ArchConfig) -> TaskAdapters | None:
    """The task adapters in `folder`'s subfolders for a family with PEFT_TASK_MODULES (task_folder(task) for each of
    its PEFT_TASKS present, in that order) and an arch without task LoRA of its own; None otherwise. Native modules
    matching the family's PEFT_IGNORE are skipped; WeightMismatch for LoRA on any other module not in the table."""
    modules = getattr(family, "PEFT_TASK_MODULES", None)
    found = [t for t in getattr(family, "PEFT_TASKS", ()) if is_adapter(folder / task_folder(t))]
    if modules is None or arch.lora_tasks or not found:
        return None
    modules = expand(modules, arch.num_layers)
    with torch.device("meta"):
        named = dict(Backbone(arch).named_modules())
    part_of = {p: (target, j) for target, parts in modules.items() for j, p in enumerate(parts)}
    per_task = [_read_one(folder / task_folder(t), part_of, family.PEFT_IGNORE) for t in found]
    embeddings = {t for t in modules if isinstance(named[t], nn.Embedding)}
    rank = max(sum(_rank(a, t in embeddings) for a, _ in f.get(t, {}).values()) for f in per_task for t in modules)
    state = {}
    for target, parts in modules.items():
        shape = tuple(named[target].weight.shape)
        stacked = [_fused(f.get(target, {}), len(parts), shape, rank, target in embeddings) for f in per_task]
        state[target + ".lora_A"] = torch.stack([a for a, _ in stacked])
        state[target + ".lora_B"] = torch.stack([b for _, b in stacked])
    return TaskAdapters(tuple(found), rank, state)


def _read_one(
    folder: Path, part_of: Mapping[str, tuple[str, int]], ignore: str
) -> dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """One adapter folder → embzoo module → {part index: (A, s · B)} in float32 and TaskLoRA's roles: Linear
    A [r, in], s · B [out, r]; Embedding (peft's) Aᵀ [V, r], s · Bᵀ [r, D]."""
    cfg = read_json(folder / ADAPTER_CONFIG)
    check_config(cfg, folder)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in read_tensors(folder).items():
        m = ADAPTER_KEY.match(key)
        if m is None:
            raise WeightMismatch(f"{folder}: {key} is not a LoRA factor (<module>.lora_A/B or lora_embedding_A/B)")
        pairs.setdefault(m["module"], {})[m["f"] + ("E" if ".lora_embedding_" in key else "")] = tensor.float()
    out: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    unknown = sorted(n for n in pairs if n not in part_of and not re.search(ignore, n))
    if unknown:
        raise WeightMismatch(f"{folder}: LoRA on modules this model does not have: {unknown}; known: {sorted(part_of)}")
    for module, f in pairs.items():
        if module not in part_of:
            continue
        target, j = part_of[module]
        r, scaling = module_scaling(cfg, module)
        if set(f) == {"AE", "BE"}:
            a, b = f["AE"].T, f["BE"].T * scaling
        elif set(f) == {"A", "B"}:
            a, b = f["A"], f["B"] * scaling
        else:
            raise WeightMismatch(f"{folder}: {module} has LoRA factors {sorted(f)}; needs one A and one B")
        if _rank(a, "AE" in f) != r:
            raise WeightMismatch(f"{folder}: {module} has rank {r} in {ADAPTER_CONFIG} but A of shape {a.shape}")
        out.setdefault(target, {})[j] = a, b
    return out


def _rank(a: torch.Tensor, embedding: bool) -> int:
    """The rank of a TaskLoRA-role A: [r, in] for a Linear, [V, r] for an Embedding."""
    return a.shape[1] if embedding else a.shape[0]


def _fused(
    parts: Mapping[int, tuple[torch.Tensor, torch.Tensor]], n: int, shape: tuple[int, ...], rank: int, embedding: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One task's factors of one module (weight `shape`, n fused parts) at `rank`, zero-padded: Linear A [rank, in],
    B [out, rank] with part j's B in the j-th of n equal row blocks; Embedding A [V, rank], B [rank, D]."""
    rows, cols = shape
    a = torch.zeros(rows, rank) if embedding else torch.zeros(rank, cols)
    b = torch.zeros(rank, cols) if embedding else torch.zeros(rows, rank)
    block, at = rows // n, 0
    for j, (pa, pb) in sorted(parts.items()):
        r = _rank(pa, embedding)
        if embedding:
            a[:, at : at + r], b[at : at + r] = pa, pb
        else:
            a[at : at + r], b[j * block : (j + 1) * block, at : at + r] = pa, pb
        at += r
    return a, b


def write_task_adapters(
    backbone: Backbone, table: Mapping[str, Sequence[str]], dst: Path, base_model: str
) -> list[Path]:
    """One PEFT LoRA folder per task of `backbone`'s TaskLoRA under `dst` (adapter_config.json +
    adapter_model.safetensors), for the native modules of `table` (embzoo module → its parts, layers filled in);
    returns the folders written."""
    lora = backbone.task_lora
    named = dict(backbone.named_modules())
    first = lora.modules[0]
    rank = first.lora_A.shape[1 if isinstance(first, nn.Linear) else 2]
    folders = []
    for t, task in enumerate(lora.tasks):
        tensors = {}
        for target, parts in table.items():
            module = named[target]
            a, b = module.lora_A[t].float(), module.lora_B[t].float()
            if isinstance(module, nn.Embedding):  # W += s · A B = s · (B' A')ᵀ with peft's A' = Aᵀ, B' = Bᵀ
                (native,) = parts
                tensors[f"base_model.model.{native}.lora_embedding_A"] = a.T
                tensors[f"base_model.model.{native}.lora_embedding_B"] = b.T
                continue
            for native, rows in zip(parts, b.chunk(len(parts)), strict=True):
                tensors[f"base_model.model.{native}.lora_A.weight"] = a.clone()  # each part saves its own copy
                tensors[f"base_model.model.{native}.lora_B.weight"] = rows
        folder = dst / task_folder(task)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "adapter_model.safetensors")
        leaves = sorted({p.rsplit(".", 1)[-1] for parts in table.values() for p in parts})
        config = {
            "peft_type": "LORA",
            "base_model_name_or_path": base_model,
            "r": rank,
            "lora_alpha": lora.scale * rank,
            "target_modules": leaves,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "task_type": None,
        }
        (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        folders.append(folder)
    return folders
