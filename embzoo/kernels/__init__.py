"""Packed-sequence kernels (unpad, pad, segment pooling, per-head norm + rotary, residual add + norm, gated
activation, MaxSim scores), dispatched to Triton or a plain-torch reference."""

import torch

from embzoo.kernels import dispatch
from embzoo.kernels.add_norm import NORM_KINDS, add_norm_ref, add_norm_triton
from embzoo.kernels.dispatch import use
from embzoo.kernels.gated_act import GATE_ACTIVATIONS, gated_act_ref, gated_act_triton
from embzoo.kernels.head_norm_rotary import head_norm_rotary_ref, head_norm_rotary_triton
from embzoo.kernels.maxsim import maxsim_ref, maxsim_triton
from embzoo.kernels.pad import pad_ref, pad_triton
from embzoo.kernels.pooling import POOLING_MODES, segment_pool_ref, segment_pool_triton
from embzoo.kernels.unpad import (
    cu_seqlens_of,
    padding_offsets,
    shift_rows,
    unpad_ref,
    unpad_triton,
)

__all__ = [
    "GATE_ACTIVATIONS",
    "NORM_KINDS",
    "POOLING_MODES",
    "add_norm",
    "cu_seqlens_of",
    "gated_act",
    "head_norm_rotary",
    "maxsim",
    "pad",
    "padding_offsets",
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


def head_norm_rotary(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    offset: float,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
) -> torch.Tensor:
    """Per head: RMSNorm over d, x / sqrt(mean(x²) + eps) · (offset + weight) (skipped if weight is None), then
    rotate-half rotary on the first r = 2 * cos.shape[1] dims (skipped if cos/sin are None); fp32 math, one rounding.

    x [T, H, d] fp32/fp16/bf16, any strides (e.g. q or k sliced from a fused qkv output), weight [d],
    cos/sin fp32 [T, r/2] -> a new contiguous [T, H, d] in x.dtype.
    """
    if dispatch.use_triton(x, weight):
        return head_norm_rotary_triton(x, weight, eps, offset, cos, sin)
    return head_norm_rotary_ref(x, weight, eps, offset, cos, sin)


def add_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    kind: str,
    offset: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normed, summed): summed = residual + x (rounded to x.dtype as torch's add), normed = norm(summed) over the last
    dim in fp32, rounded once; kind "rms": s / sqrt(mean(s²) + eps) · (offset + weight), "layer": LayerNorm (offset 0)
    with weight and optional bias. x, residual [T, D] fp32/fp16/bf16 of one dtype, any row stride (last dim
    contiguous), weight/bias [D] -> two new contiguous [T, D] in x.dtype.
    """
    if dispatch.use_triton(x, residual, weight, bias):
        return add_norm_triton(x, residual, weight, bias, eps, kind, offset)
    return add_norm_ref(x, residual, weight, bias, eps, kind, offset)


def gated_act(x: torch.Tensor, activation: str) -> torch.Tensor:
    """act(gate) · up of a fused projection x [T, 2I] = [gate | up] (last dim contiguous) -> [T, I] in x.dtype.

    activation in GATE_ACTIVATIONS; computed in fp32 and rounded once.
    """
    if dispatch.use_triton(x):
        return gated_act_triton(x, activation)
    return gated_act_ref(x, activation)
