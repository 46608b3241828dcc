"""Token-budget batching: group sequences so each batch holds at most `batch_tokens` tokens."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch

CUDA_BATCH_TOKENS, HOST_BATCH_TOKENS = 16384, 4096  # default tokens per packed batch on CUDA / elsewhere


@dataclass
class TokenCount:
    tokens: int = 0


_count: ContextVar[TokenCount | None] = ContextVar("embzoo_token_count", default=None)


@contextmanager
def counting_tokens() -> Iterator[TokenCount]:
    """Counts the tokens that token_budget_batches packs inside the block (this thread or task): every token a
    model call in it runs, prompts, templates and special tokens included (a server's usage)."""
    count = TokenCount()
    token = _count.set(count)
    try:
        yield count
    finally:
        _count.reset(token)


def batch_tokens_for(device: torch.device, batch_tokens: int | None = None) -> int:
    """The token budget per packed batch: batch_tokens as given, else the default for the device."""
    if batch_tokens is not None:
        return batch_tokens
    return CUDA_BATCH_TOKENS if device.type == "cuda" else HOST_BATCH_TOKENS


def token_budget_batches(lengths: Sequence[int], batch_tokens: int, sort: bool = True) -> list[np.ndarray]:
    """Index arrays, each a batch whose lengths sum to ≤ batch_tokens (a longer single sequence gets a
    batch of its own). sort=True orders by length, longest first; sort=False keeps arrival order."""
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if (count := _count.get()) is not None:
        count.tokens += int(lengths.sum())
    order = np.argsort(-lengths, kind="stable") if sort else np.arange(len(lengths))
    batches, start, total = [], 0, 0
    for pos, n in enumerate(lengths[order].tolist()):
        if total + n > batch_tokens and pos > start:
            batches.append(order[start:pos])
            start, total = pos, 0
        total += n
    if start < len(order):
        batches.append(order[start:])
    return batches
