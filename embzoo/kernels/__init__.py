"""Packed-sequence kernels (unpad, pad, segment pooling), dispatched to Triton or a plain-torch reference."""

import torch

from embzoo.kernels import dispatch
from embzoo.kernels.dispatch import use
from embzoo.kernels.pad import pad_ref, pad_triton
from embzoo.kernels.pooling import POOLING_MODES, segment_pool_ref, segment_pool_triton
from embzoo.kernels.unpad import cu_seqlens_from_mask, unpad_ref, unpad_triton

__all__ = ["POOLING_MODES", "cu_seqlens_from_mask", "pad", "segment_pool", "unpad", "use"]


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
