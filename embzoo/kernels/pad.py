"""Restore right padding: packed [T, *F] + cu_seqlens -> [B, max_seqlen, *F] with zeros past each length."""

import torch
from torch.library import triton_op, wrap_triton

from embzoo.kernels.dispatch import HAS_TRITON
from embzoo.kernels.unpad import check_cu_seqlens

if HAS_TRITON:
    import triton
    import triton.language as tl

    from embzoo.kernels.unpad import copy_block_sizes

    @triton.jit
    def _pad_kernel(
        x_ptr,
        cu_ptr,
        out_ptr,
        max_seqlen,
        F,
        n_t_blocks,
        BLOCK_T: tl.constexpr,
        BLOCK_F: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = pid // n_t_blocks
        rows = (pid % n_t_blocks) * BLOCK_T + tl.arange(0, BLOCK_T)
        cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
        start = tl.load(cu_ptr + b)
        length = tl.load(cu_ptr + b + 1) - start
        col_ok = (cols < F)[None, :]
        src = x_ptr + (start + rows).to(tl.int64)[:, None] * F + cols[None, :]
        vals = tl.load(src, mask=(rows < length)[:, None] & col_ok, other=0)
        dst = out_ptr + (b.to(tl.int64) * max_seqlen + rows)[:, None] * F + cols[None, :]
        tl.store(dst, vals, mask=(rows < max_seqlen)[:, None] & col_ok)

    @triton_op("embzoo::pad", mutates_args=())
    def _pad_op(x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        batch = cu_seqlens.shape[0] - 1
        out = x.new_empty((batch, max_seqlen, *x.shape[1:]))
        if out.numel() == 0 or x.numel() == 0:
            return out.zero_()
        x2 = x.reshape(x.shape[0], -1)
        if x2.stride(1) != 1 or x2.stride(0) != x2.shape[1]:
            x2 = x2.contiguous()
        feat = x2.shape[1]
        block_t, block_f = copy_block_sizes(max_seqlen, feat)
        n_t_blocks = triton.cdiv(max_seqlen, block_t)
        grid = (batch * n_t_blocks, triton.cdiv(feat, block_f))
        wrap_triton(_pad_kernel)[grid](
            x2, cu_seqlens, out, max_seqlen, feat, n_t_blocks, BLOCK_T=block_t, BLOCK_F=block_f
        )
        return out


def pad_ref(x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """Plain-torch pad: x [T, *F], cu_seqlens int32 [B+1] -> [B, max_seqlen, *F], zeros past each length."""
    check_cu_seqlens(cu_seqlens)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(x.device)
    out = x.new_zeros((lengths.shape[0], max_seqlen, *x.shape[1:]))
    out[torch.arange(max_seqlen, device=x.device) < lengths[:, None]] = x
    return out


def pad_triton(x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
    """Triton pad: x [T, *F], cu_seqlens int32 [B+1] -> [B, max_seqlen, *F], zeros past each length."""
    check_cu_seqlens(cu_seqlens)
    return _pad_op(x, cu_seqlens.to(x.device), max_seqlen)
