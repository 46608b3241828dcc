"""Scores between encoded queries and documents, for each encode output: dense (dot product), sparse (dot product
over shared token ids) and multi-vector (MaxSim: each query token's best document token, summed as ColBERT does or
averaged as BGE-M3 does).

Every function takes what encode returns (numpy or torch; one text's output or a list) and gives float32 [Nq, Nd]
scores; pairwise=True scores query i with document i ([N]), and `pairs` (int [P, 2] of query and document indices)
scores just those pairs ([P]).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from embzoo import kernels
from embzoo.sparse_vectors import as_coo


def _tensor(x: Any, device: torch.device | str | None) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, device=device)


def _pairs(nq: int, nd: int, pairwise: bool, pairs: Any, device: torch.device) -> torch.Tensor | None:
    """int64 [P, 2] (query index, document index) pairs to score, or None for the full matrix."""
    if pairwise:
        if pairs is not None or nq != nd:
            raise ValueError(
                f"pairwise scores query i with document i: pass no pairs and as many queries ({nq}) as documents ({nd})"
            )
        return torch.arange(nq, device=device).repeat(2, 1).T.contiguous()
    if pairs is None:
        return None
    pairs = _tensor(pairs, device).long().reshape(-1, 2)
    if len(pairs) and (pairs.min() < 0 or pairs[:, 0].max() >= nq or pairs[:, 1].max() >= nd):
        raise ValueError(f"pairs must index {nq} queries and {nd} documents")
    return pairs


def dense_scores(queries: Any, documents: Any, *, pairwise: bool = False, pairs: Any = None) -> torch.Tensor:
    """Dot products of sentence vectors [Nq, D] and [Nd, D] (or one [D] each; cosine for normalized vectors)."""
    q = _tensor(queries, None).float()
    d = _tensor(documents, q.device).float()
    q, d = q.reshape(-1, q.shape[-1]), d.reshape(-1, d.shape[-1])
    index = _pairs(len(q), len(d), pairwise, pairs, q.device)
    return q @ d.T if index is None else (q[index[:, 0]] * d[index[:, 1]]).sum(-1)


def sparse_scores(queries: Any, documents: Any, *, pairwise: bool = False, pairs: Any = None) -> torch.Tensor:
    """Dot products of sparse vectors (dicts, sparse torch tensors or scipy matrices; one text's or several; as
    FlagEmbedding's lexical matching score): the sum over token ids in both of the two weights' product."""
    q, d = as_coo(queries), as_coo(documents)
    width = max(q.shape[1], d.shape[1])
    q, d = (
        torch.sparse_coo_tensor(x.indices(), x.values(), (x.shape[0], width), check_invariants=False) for x in (q, d)
    )
    q = q.to(d.device)
    index = _pairs(q.shape[0], d.shape[0], pairwise, pairs, d.device)
    if index is None:
        return torch.sparse.mm(q, d.t()).to_dense()
    products = q.index_select(0, index[:, 0]) * d.index_select(0, index[:, 1])
    return torch.sparse.sum(products, dim=1).to_dense() if products._nnz() else torch.zeros(len(index), device=d.device)


def _packed(vectors: Any, device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-text [n_i, dim] vectors (or one text's [n, dim]) → packed float32 [sum n_i, dim], int32 cu_seqlens [N+1]."""
    if isinstance(vectors, (np.ndarray, torch.Tensor)) and vectors.ndim == 2:
        vectors = [vectors]
    parts = [_tensor(v, device).float() for v in vectors]
    if not parts:
        raise ValueError("no multi-vector inputs to score")
    lengths = torch.tensor([0] + [len(p) for p in parts])
    return torch.cat(parts), lengths.cumsum(0).to(device=parts[0].device, dtype=torch.int32)


def maxsim_scores(
    queries: Sequence[Any], documents: Sequence[Any], *, reduce: str = "sum", pairwise: bool = False, pairs: Any = None
) -> torch.Tensor:
    """MaxSim of per-text token vectors: per query token the largest dot product with any document token, summed
    over the query's tokens (reduce "sum", ColBERT) or averaged ("mean", BGE-M3's colbert_score); an empty document
    scores 0 (embzoo.kernels.maxsim, Triton on CUDA)."""
    q, cu_q = _packed(queries, None)
    d, cu_d = _packed(documents, q.device)
    index = _pairs(len(cu_q) - 1, len(cu_d) - 1, pairwise, pairs, q.device)
    return kernels.maxsim(q, cu_q, d, cu_d, index, reduce=reduce)
