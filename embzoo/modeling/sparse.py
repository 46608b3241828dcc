"""Sparse lexical heads: packed token states → one weight per vocabulary id per sequence (SparseRows).

- TokenWeightSparse (BGE-M3's sparse_linear): w_t = relu(linear(h_t)) per token; a sequence's weight for a
  token id is the max over its occurrences; special token ids and zero weights are left out.
- SpladeSparse (SPLADE): the masked-LM head's logits, max over each sequence's tokens, then log(1 + relu(·)).
  log1p∘relu is monotone, so pooling the logits first equals SPLADE's max over log1p(relu(logits)).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from embzoo import kernels
from embzoo.modeling.batch import PackedBatch
from embzoo.modeling.heads import ClassificationHead


@dataclass
class SparseRows:
    """B sparse vectors over a vocabulary: row b is ids[offsets[b]:offsets[b+1]] (int64, ascending) with their
    float32 weights (all > 0)."""

    offsets: torch.Tensor  # int64 [B+1]
    ids: torch.Tensor  # int64 [nnz]
    weights: torch.Tensor  # float32 [nnz]

    def rows(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(ids, weights) of each row (one host sync for the row sizes)."""
        sizes = (self.offsets[1:] - self.offsets[:-1]).tolist()
        return list(zip(self.ids.split(sizes), self.weights.split(sizes), strict=True))


def sparse_rows(
    rows: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, count: int, top_k: int | None
) -> SparseRows:
    """SparseRows from (row, id, weight) entries sorted by row then id, keeping each row's top_k weights (None:
    all; ties keep the lower id)."""
    if top_k is not None:  # each entry's rank in its row by weight; the entries' order breaks ties (lower id)
        order = torch.argsort(weights, descending=True, stable=True)
        order = order[torch.argsort(rows[order], stable=True)]
        grouped = rows[order]
        rank = torch.arange(order.numel(), device=rows.device) - torch.searchsorted(grouped, grouped)
        kept = order[rank < top_k].sort().values  # back to row, id order
        rows, ids, weights = rows[kept], ids[kept], weights[kept]
    offsets = torch.searchsorted(rows, torch.arange(count + 1, device=rows.device))
    return SparseRows(offsets, ids, weights)


class TokenWeightSparse(nn.Module):
    """BGE-M3's sparse head: linear [1, D] + bias; forward gives each sequence's max relu weight per token id."""

    def __init__(self, hidden_size: int, vocab_size: int, dropped_ids: Iterable[int]):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        self.vocab_size = vocab_size
        self.register_buffer("dropped", torch.tensor(sorted(set(dropped_ids)), dtype=torch.int64), persistent=False)

    def forward(self, h: torch.Tensor, batch: PackedBatch, top_k: int | None = None) -> SparseRows:
        """h [T, D] → SparseRows of the batch's B sequences."""
        w = torch.relu(self.linear(h.to(self.linear.weight.dtype)).squeeze(-1).float())
        lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).long()
        seq = torch.repeat_interleave(torch.arange(lengths.numel(), device=h.device), lengths, output_size=h.shape[0])
        keep = (w > 0) & ~torch.isin(batch.input_ids, self.dropped.to(h.device))
        keys, inverse = torch.unique(seq[keep] * self.vocab_size + batch.input_ids[keep], return_inverse=True)
        weights = torch.zeros(keys.numel(), device=h.device).scatter_reduce_(
            0, inverse, w[keep], "amax", include_self=False
        )
        return sparse_rows(keys // self.vocab_size, keys % self.vocab_size, weights, lengths.numel(), top_k)


class SpladeSparse(nn.Module):
    """SPLADE: `mlm` (dense → act → LayerNorm → decoder [V, D], the masked-LM head) on every token, then per
    sequence pooling "max" or "sum" of log(1 + relu(x)) (activation "relu"), or of log(1 + log(1 + relu(x)))
    ("log1p_relu", OpenSearch's), as sentence-transformers' SpladePooling."""

    def __init__(self, mlm: ClassificationHead, pooling: str = "max", activation: str = "relu"):
        super().__init__()
        if pooling not in ("max", "sum") or activation not in ("relu", "log1p_relu"):
            raise ValueError(
                f"SPLADE pooling {pooling!r} / activation {activation!r}; supported: max|sum, relu|log1p_relu"
            )
        self.mlm = mlm
        self.pooling = pooling
        self.activation = activation

    @property
    def vocab_size(self) -> int:
        return self.mlm.out.out_features

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.log1p(torch.relu(x))
        return torch.log1p(x) if self.activation == "log1p_relu" else x

    def forward(self, h: torch.Tensor, batch: PackedBatch, top_k: int | None = None) -> SparseRows:
        """h [T, D] → SparseRows of the batch's B sequences."""
        logits = self.mlm(h)  # [T, V]
        if self.pooling == "max":  # the activation is monotone: pool first, on B rows instead of T
            weights = self._act(kernels.segment_pool(logits, batch.cu_seqlens, "max"))
        else:
            lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).float()
            weights = kernels.segment_pool(self._act(logits.float()), batch.cu_seqlens, "mean") * lengths[:, None]
        rows, ids = weights.nonzero(as_tuple=True)
        return sparse_rows(rows, ids, weights[rows, ids], weights.shape[0], top_k)
