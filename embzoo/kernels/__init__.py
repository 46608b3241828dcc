"""Packed-sequence kernels (unpad, pad, segment pooling, rotary, MaxSim scores), dispatched to Triton or plain torch."""

import torch

from embzoo.kernels import dispatch
from embzoo.kernels.dispatch import use
from embzoo.kernels.maxsim import maxsim_ref, maxsim_triton
from embzoo.kernels.pad import pad_ref, pad_triton
from embzoo.kernels.pooling import POOLING_MODES, segment_pool_ref, segment_pool_triton
from embzoo.kernels.rotary import rotary_ref, rotary_triton
from embzoo.kernels.unpad import (
    cu_seqlens_of,
    padding_offsets,
    shift_rows,
    unpad_ref,
    unpad_triton,
)

__all__ = [
    "POOLING_MODES",
    "cu_seqlens_of",
    "maxsim",
    "pad",
    "padding_offsets",
    "rotary",
    "segment_pool",
    "shift_rows",
    "unpad",
    "use",
]


def unpad(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Right-padded x [B, S, *F] + cu_seqlens int32 [B+1] -> packed [cu[-1], *F], same dtype."""
    if dispatch.use_triton(x):
        return unpad_triton(x, cu_seqlens)
    return unpad_ref(x, cu_seqlens)


def pad(x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """Packed x [T, *F] + cu_seqlens int32 [B+1] -> [B, max_seqlen, *F], zeros past each length."""
    if dispatch.use_triton(x):
        return pad_triton(x, cu_seqlens, max_seqlen)
    return pad_ref(x, cu_seqlens, max_seqlen)


def segment_pool(
    x: torch.Tensor, cu_seqlens: torch.Tensor, mode: str, skip: torch.Tensor | None = None
) -> torch.Tensor:
    """Pool packed x [T, D] per sequence -> fp32 [B, D]; mode in POOLING_MODES.

    skip int32 [B] (optional) = leading tokens of each sequence left out of the pool, clamped to [0, len].
    """
    if dispatch.use_triton(x):
        return segment_pool_triton(x, cu_seqlens, mode, skip)
    return segment_pool_ref(x, cu_seqlens, mode, skip)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half (NeoX) rotary in place on the first r = 2 * cos.shape[1] dims of every head; returns x.

    x [T, H, d] fp32/fp16/bf16 (e.g. q or k unbound from a fused [T, 3, H, d] projection), cos/sin fp32 [T, r/2].
    """
    if dispatch.use_triton(x):
        return rotary_triton(x, cos, sin)
    return rotary_ref(x, cos, sin)


def maxsim(
    queries: torch.Tensor,
    cu_q: torch.Tensor,
    docs: torch.Tensor,
    cu_d: torch.Tensor,
    pairs: torch.Tensor | None = None,
    *,
    reduce: str = "sum",
) -> torch.Tensor:
    """MaxSim of packed queries [Tq, d] (cu_q int32 [Nq+1]) vs docs [Td, d] (cu_d int32 [Nd+1]) -> fp32 [Nq, Nd],
    or [P] for pairs int64 [P, 2] of (query index, doc index); fp32/fp16/bf16 inputs of one dtype.

    score(i, j) = sum ("sum": ColBERT/PyLate) or mean ("mean": BGE-M3) over query i's tokens of the largest
    dot product with doc j's tokens, in fp32. An empty document scores 0 for every query; an empty query scores 0.
    """
    if dispatch.use_triton(queries) and dispatch.use_triton(docs):
        return maxsim_triton(queries, cu_q, docs, cu_d, pairs, reduce=reduce)
    return maxsim_ref(queries, cu_q, docs, cu_d, pairs, reduce=reduce)
