"""Scores between encoded queries and documents, for each encode output: dense (dot product), sparse (dot product
over shared token ids) and multi-vector (MaxSim: each query token's best document token, summed as ColBERT does or
averaged as BGE-M3 does).

Every function takes what encode returns (numpy or torch) and gives float32 [Nq, Nd] scores, or [N] with
pairwise=True (query i with document i).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from embzoo import kernels
from embzoo.sparse_vectors import as_coo

REDUCES = ("sum", "mean")


def _tensor(x: Any, device: torch.device | str | None) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, device=device)


def _check_pairwise(nq: int, nd: int, pairwise: bool) -> None:
    if pairwise and nq != nd:
        raise ValueError(f"pairwise scoring needs as many queries as documents; got {nq} and {nd}")


def dense_scores(queries: Any, documents: Any, *, pairwise: bool = False) -> torch.Tensor:
    """Dot products of sentence vectors [Nq, D] and [Nd, D] (cosine for normalized vectors)."""
    q = _tensor(queries, None).float()
    d = _tensor(documents, q.device).float()
    q, d = q.reshape(-1, q.shape[-1]), d.reshape(-1, d.shape[-1])
    _check_pairwise(len(q), len(d), pairwise)
    return (q * d).sum(-1) if pairwise else q @ d.T


def sparse_scores(queries: Any, documents: Any, *, pairwise: bool = False) -> torch.Tensor:
    """Dot products of sparse vectors (dicts, sparse torch tensors or scipy matrices; FlagEmbedding's lexical
    matching score): the sum over token ids in both of the two weights' product."""
    q, d = as_coo(queries), as_coo(documents)
    width = max(q.shape[1], d.shape[1])
    q, d = (torch.sparse_coo_tensor(x.indices(), x.values(), (x.shape[0], width)) for x in (q, d))
    _check_pairwise(q.shape[0], d.shape[0], pairwise)
    if pairwise:
        return torch.sparse.sum(q.to(d.device) * d, dim=1).to_dense()
    return torch.sparse.mm(q.to(d.device), d.t()).to_dense()


def _packed(vectors: Sequence[Any], device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-text [n_i, dim] vectors → packed float32 [sum n_i, dim] and int32 cu_seqlens [N+1]."""
    parts = [_tensor(v, device).float() for v in vectors]
    if not parts:
        raise ValueError("no multi-vector inputs to score")
    lengths = torch.tensor([0] + [len(p) for p in parts])
    return torch.cat(parts), lengths.cumsum(0).to(device=parts[0].device, dtype=torch.int32)


def maxsim_scores(
    queries: Sequence[Any], documents: Sequence[Any], *, reduce: str = "sum", pairwise: bool = False
) -> torch.Tensor:
    """MaxSim of per-text token vectors: per query token the largest dot product with any document token, summed
    over the query's tokens (reduce "sum", ColBERT) or averaged ("mean", BGE-M3's colbert_score)."""
    if reduce not in REDUCES:
        raise ValueError(f"unknown reduce {reduce!r}; allowed: {REDUCES}")
    q, cu_q = _packed(queries, None)
    d, cu_d = _packed(documents, q.device)
    _check_pairwise(len(cu_q) - 1, len(cu_d) - 1, pairwise)
    pairs = torch.arange(len(cu_q) - 1, device=q.device).repeat(2, 1).T.contiguous() if pairwise else None
    return kernels.maxsim(q, cu_q, d, cu_d, pairs, reduce=reduce)
