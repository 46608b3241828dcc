"""Sparse vectors over a vocabulary, in the three forms encode(output="sparse") returns, and back.

Forms: "dict" (a list of {token id: weight} per text, as FlagEmbedding's lexical_weights but with int keys),
"torch" (a coalesced sparse COO tensor [N, vocab], as sentence-transformers' SparseEncoder) and "scipy" (a CSR
matrix [N, vocab]; needs scipy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

Rows = list[tuple[torch.Tensor, torch.Tensor]]  # per text: (int64 ids, float32 weights)


def _scipy_sparse() -> Any:
    try:
        import scipy.sparse
    except ImportError:
        raise ImportError("sparse_format='scipy' needs scipy: pip install scipy (or use 'dict' or 'torch')") from None
    return scipy.sparse


def sparse_output(rows: Rows, vocab_size: int, form: str, device: torch.device) -> Any:
    """Per-text (ids, weights) → form "dict", "torch" (on device) or "scipy"."""
    sizes = [ids.numel() for ids, _ in rows]
    ids = torch.cat([i for i, _ in rows]) if rows else torch.zeros(0, dtype=torch.int64)
    weights = torch.cat([w for _, w in rows]) if rows else torch.zeros(0)
    if form == "torch":
        row_of = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(sizes, dtype=torch.int64))
        indices = torch.stack([row_of.to(ids.device), ids])
        coo = torch.sparse_coo_tensor(indices, weights, (len(rows), vocab_size), device=device, check_invariants=False)
        return coo.coalesce()
    ids, weights = ids.cpu().numpy(), weights.cpu().numpy()
    if form == "scipy":
        indptr = np.concatenate([[0], np.cumsum(sizes)])
        return _scipy_sparse().csr_matrix((weights, ids, indptr), shape=(len(rows), vocab_size))
    bounds = np.cumsum([0, *sizes])
    return [
        dict(zip(ids[a:b].tolist(), weights[a:b].tolist(), strict=True))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def as_coo(vectors: Any, vocab_size: int | None = None) -> torch.Tensor:
    """Sparse vectors in any of the three forms (a dict list may have str keys, as FlagEmbedding's) → a
    coalesced float32 sparse COO tensor [N, V]; V = vocab_size, else the largest id + 1."""
    if isinstance(vectors, torch.Tensor):
        if not vectors.is_sparse:
            raise TypeError(
                "expected a sparse torch tensor [N, vocab] (encode(output='sparse', sparse_format='torch'))"
            )
        return vectors.float().coalesce()
    if hasattr(vectors, "tocoo"):  # scipy sparse
        coo = vectors.tocoo()
        indices = torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64))
        values = torch.from_numpy(coo.data.astype(np.float32))
        return torch.sparse_coo_tensor(indices, values, coo.shape, check_invariants=False).coalesce()
    rows = _dict_rows(vectors)
    row_of = [r for r, d in enumerate(rows) for _ in d]
    ids = [int(k) for d in rows for k in d]
    width = vocab_size if vocab_size is not None else max(ids, default=-1) + 1
    indices = torch.tensor([row_of, ids], dtype=torch.int64).reshape(2, -1)
    values = torch.tensor([float(v) for d in rows for v in d.values()], dtype=torch.float32)
    return torch.sparse_coo_tensor(indices, values, (len(rows), width), check_invariants=False).coalesce()


def _dict_rows(vectors: Any) -> Sequence[dict]:
    if isinstance(vectors, dict):
        return [vectors]
    rows = list(vectors)
    if not all(isinstance(r, dict) for r in rows):
        raise TypeError("expected sparse vectors: {token id: weight} dicts, a sparse torch tensor or a scipy matrix")
    return rows
