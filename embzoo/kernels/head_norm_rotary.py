"""Per-head RMSNorm then NeoX rotary on packed q or k [T, H, d], fused: strided view in, new contiguous out."""

import torch
import torch.nn.functional as F
from torch.library import triton_op, wrap_triton

from embzoo.kernels.dispatch import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

    # Aim for about this many programs before several heads share one program (and its cos/sin/weight loads).
    _TARGET_PROGRAMS = 2048
    # Elements of one head's [BLOCK_T, d] tile held in registers.
    _TILE_ELEMENTS = 4096

    @triton.jit
    def _head_norm_rotary_kernel(
        x_ptr,
        w_ptr,
        cos_ptr,
        sin_ptr,
        out_ptr,
        T,
        H,
        D,
        HALF,
        eps,
        offset,
        stride_xt,
        stride_xh,
        stride_xd,
        stride_ct,
        stride_cd,
        stride_st,
        stride_sd,
        heads_per_prog,
        HAS_WEIGHT: tl.constexpr,
        HAS_ROTARY: tl.constexpr,
        HAS_REST: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        # A row of one head is split into x1 = [0, HALF), x2 = [HALF, 2 HALF) (rotated) and x3 = [2 HALF, D).
        rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        row_ok = rows < T
        cols_r = tl.arange(0, BLOCK_R)
        mask_r = row_ok[:, None] & (cols_r < HALF)[None, :]
        cols_p = 2 * HALF + tl.arange(0, BLOCK_P)
        mask_p = row_ok[:, None] & (cols_p < D)[None, :]
        # cos/sin and the weight are loaded once per program and reused for every head of it.
        if HAS_ROTARY:
            cos = tl.load(cos_ptr + rows[:, None] * stride_ct + cols_r[None, :] * stride_cd, mask=mask_r, other=0.0)
            sin = tl.load(sin_ptr + rows[:, None] * stride_st + cols_r[None, :] * stride_sd, mask=mask_r, other=0.0)
            cos = cos.to(tl.float32)
            sin = sin.to(tl.float32)
            if HAS_WEIGHT:
                w1 = tl.load(w_ptr + cols_r, mask=cols_r < HALF, other=0.0).to(tl.float32) + offset
                w2 = tl.load(w_ptr + HALF + cols_r, mask=cols_r < HALF, other=0.0).to(tl.float32) + offset
        if HAS_REST and HAS_WEIGHT:
            w3 = tl.load(w_ptr + cols_p, mask=cols_p < D, other=0.0).to(tl.float32) + offset
        h_lo = tl.program_id(1) * heads_per_prog
        h_hi = tl.minimum(h_lo + heads_per_prog, H)
        src = x_ptr + h_lo.to(tl.int64) * stride_xh + rows[:, None] * stride_xt
        dst = out_ptr + (rows[:, None] * H + h_lo) * D
        for _ in range(h_lo, h_hi):
            sum_sq = tl.zeros([BLOCK_T], dtype=tl.float32)
            if HAS_ROTARY:
                x1 = tl.load(src + cols_r[None, :] * stride_xd, mask=mask_r, other=0.0).to(tl.float32)
                x2 = tl.load(src + (HALF + cols_r)[None, :] * stride_xd, mask=mask_r, other=0.0).to(tl.float32)
                sum_sq += tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)
            if HAS_REST:
                x3 = tl.load(src + cols_p[None, :] * stride_xd, mask=mask_p, other=0.0).to(tl.float32)
                sum_sq += tl.sum(x3 * x3, axis=1)
            if HAS_WEIGHT:
                inv_rms = (1.0 / tl.sqrt(sum_sq / D + eps))[:, None]
                if HAS_ROTARY:
                    x1 = x1 * inv_rms * w1[None, :]
                    x2 = x2 * inv_rms * w2[None, :]
                if HAS_REST:
                    x3 = x3 * inv_rms * w3[None, :]
            if HAS_ROTARY:
                tl.store(dst + cols_r[None, :], (x1 * cos - x2 * sin).to(out_ptr.dtype.element_ty), mask=mask_r)
                tl.store(
                    dst + (HALF + cols_r)[None, :], (x2 * cos + x1 * sin).to(out_ptr.dtype.element_ty), mask=mask_r
                )
            if HAS_REST:
                tl.store(dst + cols_p[None, :], x3.to(out_ptr.dtype.element_ty), mask=mask_p)
            src += stride_xh
            dst += D

    def head_norm_rotary_launch_sizes(tokens: int, heads: int, dim: int, half: int) -> tuple[int, int, int, int]:
        """(BLOCK_T, BLOCK_R, BLOCK_P, heads_per_prog): about _TILE_ELEMENTS per head tile; heads share a
        program only when there are already enough token blocks to fill the GPU."""
        block_r = triton.next_power_of_2(half) if half else 1
        rest = dim - 2 * half
        block_p = triton.next_power_of_2(rest) if rest else 1
        width = (2 * block_r if half else 0) + (block_p if rest else 0)
        # a partial rotary's width (2 BLOCK_R + BLOCK_P) need not be a power of two; BLOCK_T (tl.arange) must be
        block_t = max(1, min(triton.next_power_of_2(tokens), _TILE_ELEMENTS // triton.next_power_of_2(width)))
        n_t_blocks = triton.cdiv(tokens, block_t)
        head_groups = max(1, min(heads, triton.cdiv(_TARGET_PROGRAMS, n_t_blocks)))
        return block_t, block_r, block_p, triton.cdiv(heads, head_groups)

    # No autotune: one config chosen from the shape (see head_norm_rotary_launch_sizes).
    @triton_op("embzoo::head_norm_rotary", mutates_args={})
    def _head_norm_rotary_op(
        x: torch.Tensor,
        weight: torch.Tensor | None,
        eps: float,
        offset: float,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
    ) -> torch.Tensor:
        tokens, heads, dim = x.shape
        out = torch.empty((tokens, heads, dim), dtype=x.dtype, device=x.device)
        if out.numel() == 0:
            return out
        half = 0 if cos is None else cos.shape[1]
        block_t, block_r, block_p, heads_per_prog = head_norm_rotary_launch_sizes(tokens, heads, dim, half)
        grid = (triton.cdiv(tokens, block_t), triton.cdiv(heads, heads_per_prog))
        # Absent tensors are never read (their constexpr flag is off); x stands in for their pointers.
        cos_or_x = x if cos is None else cos
        sin_or_x = x if sin is None else sin
        wrap_triton(_head_norm_rotary_kernel)[grid](
            x,
            x if weight is None else weight,
            cos_or_x,
            sin_or_x,
            out,
            tokens,
            heads,
            dim,
            half,
            eps,
            offset,
            x.stride(0),
            x.stride(1),
            x.stride(2),
            cos_or_x.stride(0),
            cos_or_x.stride(1),
            sin_or_x.stride(0),
            sin_or_x.stride(1),
            heads_per_prog,
            HAS_WEIGHT=weight is not None,
            HAS_ROTARY=half > 0,
            HAS_REST=dim > 2 * half,
            BLOCK_T=block_t,
            BLOCK_R=block_r,
            BLOCK_P=block_p,
        )
        return out


def _check_args(
    x: torch.Tensor, weight: torch.Tensor | None, cos: torch.Tensor | None, sin: torch.Tensor | None
) -> None:
    if x.dim() != 3 or not x.is_floating_point():
        raise ValueError(f"x must be a 3-D floating tensor [tokens, heads, head_dim], got {x.dtype} {tuple(x.shape)}")
    if weight is not None and (weight.shape != x.shape[2:] or not weight.is_floating_point()):
        raise ValueError(
            f"weight must be a floating [head_dim] = [{x.shape[2]}] tensor or None, "
            f"got {weight.dtype} {tuple(weight.shape)}"
        )
    if (cos is None) != (sin is None):
        raise ValueError("cos and sin must both be given (rotary) or both be None (no rotary)")
    if cos is None:
        return
    if cos.dim() != 2 or cos.shape != sin.shape or not (cos.is_floating_point() and sin.is_floating_point()):
        raise ValueError(
            f"cos and sin must be floating tensors of the same 2-D shape [tokens, rotary_dim / 2], "
            f"got {cos.dtype} {tuple(cos.shape)} and {sin.dtype} {tuple(sin.shape)}"
        )
    if cos.shape[0] != x.shape[0] or 2 * cos.shape[1] > x.shape[2]:
        raise ValueError(
            f"cos/sin of shape {tuple(cos.shape)} do not fit x of shape {tuple(x.shape)}: "
            f"need {x.shape[0]} rows and at most {x.shape[2] // 2} columns"
        )


def head_norm_rotary_ref(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    offset: float,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
) -> torch.Tensor:
    """Plain-torch RMSNorm over d (if weight) then rotate-half rotary (if cos/sin), all in fp32.

    x [T, H, d] fp32/fp16/bf16, any strides; weight [d]; cos/sin fp32 [T, r/2] -> new contiguous [T, H, d] in x.dtype.
    """
    _check_args(x, weight, cos, sin)
    y = x.float()
    if weight is not None:
        y = F.rms_norm(y, (x.shape[2],), eps=eps) * (offset + weight.to(device=x.device, dtype=torch.float32))
    if cos is not None and cos.shape[1]:
        half = cos.shape[1]
        cos = cos.to(device=x.device, dtype=torch.float32)[:, None, :]
        sin = sin.to(device=x.device, dtype=torch.float32)[:, None, :]
        y1, y2 = y[..., :half], y[..., half : 2 * half]
        y = torch.cat([y1 * cos - y2 * sin, y2 * cos + y1 * sin, y[..., 2 * half :]], dim=-1)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(y)


def head_norm_rotary_triton(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    offset: float,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
) -> torch.Tensor:
    """Triton version of head_norm_rotary_ref: one read of x (any strides), one contiguous write, one launch."""
    _check_args(x, weight, cos, sin)
    if cos is not None:
        cos = cos.to(device=x.device, dtype=torch.float32)
        sin = sin.to(device=x.device, dtype=torch.float32)
    if weight is not None:
        weight = weight.to(device=x.device).contiguous()
    return _head_norm_rotary_op(x, weight, float(eps), float(offset), cos, sin)
