"""Task LoRA (jina-embeddings-v3): one low-rank update per task on every Linear and Embedding of a backbone.

The factors of the K tasks (ArchConfig.lora_tasks) are stacked and live on the layers as parameters `lora_A`,
`lora_B` (so strict loading fills them); s = lora_alpha / lora_rank:
- Linear, weight [out, in]:  lora_A [K, r, in], lora_B [K, out, r];  W_t = W + s · B_t @ A_t
- Embedding, weight [V, D]:  lora_A [K, V, r],  lora_B [K, r, D];    W_t = W + s · A_t @ B_t  (roles swapped)
No task = the base weights. Two ways to run task t, same result:
- `active(t)`: a forward hook adds s · (x A_tᵀ) B_tᵀ (Linear) or s · A_t[ids] B_t (Embedding) to each output,
  per batch; no weight is copied.
- `merged(t)`: W_t is written into the weights (summed in float32, cast once) and the originals are put back
  afterwards; it needs a spare copy of those weights in free memory (`can_merge`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

Adapted = nn.Linear | nn.Embedding


class TaskLoRA:
    """Stacked per-task LoRA factors on `modules` and the task they run with (None = base weights)."""

    def __init__(self, modules: Sequence[Adapted], tasks: Sequence[str], rank: int, alpha: float):
        self.modules = list(modules)
        self.tasks = tuple(tasks)
        self.scale = alpha / rank
        self.task: int | None = None  # index into tasks of the adapter the hooks add
        k = len(self.tasks)
        for m in self.modules:
            if isinstance(m, nn.Linear):
                shapes = (k, rank, m.in_features), (k, m.out_features, rank)
            else:
                shapes = (k, m.num_embeddings, rank), (k, rank, m.embedding_dim)
            like = {"dtype": m.weight.dtype, "device": m.weight.device}
            m.lora_A = nn.Parameter(torch.empty(shapes[0], **like), requires_grad=False)
            m.lora_B = nn.Parameter(torch.empty(shapes[1], **like), requires_grad=False)
            m.register_forward_hook(self._hook)

    def index(self, task: str) -> int:
        """The position of `task` in the stacked factors; ValueError naming the tasks for an unknown one."""
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; tasks are {list(self.tasks)} (no task: base weights)")
        return self.tasks.index(task)

    def _hook(self, module: Adapted, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor | None:
        if self.task is None:
            return None
        a, b = module.lora_A[self.task], module.lora_B[self.task]
        if isinstance(module, nn.Linear):
            return out + F.linear(F.linear(args[0], a), b) * self.scale
        return out + (F.embedding(args[0], a) @ b) * self.scale

    def delta(self, module: Adapted, task: int) -> torch.Tensor:
        """s · the update of `module`'s weight for task index `task`, float32, shaped like the weight."""
        a, b = module.lora_A[task].float(), module.lora_B[task].float()
        return (b @ a if isinstance(module, nn.Linear) else a @ b) * self.scale

    @contextmanager
    def active(self, task: str | None) -> Iterator[None]:
        """Run with `task`'s adapter added on the fly (None: base weights)."""
        previous, self.task = self.task, None if task is None else self.index(task)
        try:
            yield
        finally:
            self.task = previous

    def can_merge(self) -> bool:
        """True when free memory on the weights' device holds a copy of every adapted weight plus one float32
        update (what `merged` needs)."""
        weights = [m.weight for m in self.modules]
        need = sum(w.numel() * w.element_size() for w in weights) + max(w.numel() for w in weights) * 4
        device = weights[0].device
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
        else:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return free > need

    @contextmanager
    def merged(self, task: str) -> Iterator[None]:
        """Run with `task`'s update merged into the weights; the base weights are restored on exit."""
        t = self.index(task)
        saved = [m.weight.detach().clone() for m in self.modules]
        previous, self.task = self.task, None
        try:
            with torch.no_grad():
                for m in self.modules:
                    m.weight.copy_(m.weight.float() + self.delta(m, t))
            yield
        finally:
            with torch.no_grad():
                for m, w in zip(self.modules, saved, strict=True):
                    m.weight.copy_(w)
            self.task = previous


def attach_task_lora(module: nn.Module, tasks: Sequence[str], rank: int, alpha: float) -> TaskLoRA:
    """Task LoRA on every Linear and Embedding inside `module` (in module order)."""
    adapted = [m for m in module.modules() if isinstance(m, nn.Linear | nn.Embedding)]
    return TaskLoRA(adapted, tasks, rank, alpha)
