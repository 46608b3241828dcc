"""NeoX-style (rotate-half) rotary position embedding, applied in place to packed q or k [T, H, d]."""

import torch
from torch.library import triton_op, wrap_triton

from embzoo.kernels.dispatch import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

    # Aim for about this many programs before several heads share one program (and its cos/sin loads).
    _TARGET_PROGRAMS = 1024

    @triton.jit
    def _rotary_kernel(
        x_ptr,
        cos_ptr,
        sin_ptr,
        T,
        H,
        HALF,
        stride_xt,
        stride_xh,
        stride_xd,
        stride_ct,
        stride_cd,
        stride_st,
        stride_sd,
        heads_per_prog,
        BLOCK_T: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        cols = tl.arange(0, BLOCK_R)
        mask = (rows < T)[:, None] & (cols < HALF)[None, :]
        # cos/sin are loaded once per token block and reused for every head of this program.
        cos = tl.load(cos_ptr + rows[:, None] * stride_ct + cols[None, :] * stride_cd, mask=mask, other=0.0)
        sin = tl.load(sin_ptr + rows[:, None] * stride_st + cols[None, :] * stride_sd, mask=mask, other=0.0)
        cos = cos.to(tl.float32)
        sin = sin.to(tl.float32)
        h_lo = tl.program_id(1) * heads_per_prog
        h_hi = tl.minimum(h_lo + heads_per_prog, H)
        p1 = x_ptr + h_lo.to(tl.int64) * stride_xh + rows[:, None] * stride_xt + cols[None, :] * stride_xd
        second_offset = HALF * stride_xd
        for _ in range(h_lo, h_hi):
            p2 = p1 + second_offset
            x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
            x2 = tl.load(p2, mask=mask, other=0.0).to(tl.float32)
            tl.store(p1, (x1 * cos - x2 * sin).to(p1.dtype.element_ty), mask=mask)
            tl.store(p2, (x2 * cos + x1 * sin).to(p2.dtype.element_ty), mask=mask)
            p1 += stride_xh

    def rotary_launch_sizes(tokens: int, heads: int, half: int) -> tuple[int, int, int]:
        """(BLOCK_T, BLOCK_R, heads_per_prog): about 2048 elements per half-tile; heads share a program
        only when there are already enough token blocks to fill the GPU."""
        block_r = triton.next_power_of_2(half)
        block_t = max(1, min(triton.next_power_of_2(tokens), 2048 // block_r))
        n_t_blocks = triton.cdiv(tokens, block_t)
        head_groups = max(1, min(heads, triton.cdiv(_TARGET_PROGRAMS, n_t_blocks)))
        return block_t, block_r, triton.cdiv(heads, head_groups)

    # In place: the op mutates x and returns nothing (a custom op may not return an alias of an input);
    # rotary_triton returns x itself. No autotune: benchmarking would apply the rotation several times.
    @triton_op("embzoo::rotary", mutates_args={"x"})
    def _rotary_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        tokens, heads, _ = x.shape
        half = cos.shape[1]
        if tokens == 0 or heads == 0 or half == 0:
            return
        block_t, block_r, heads_per_prog = rotary_launch_sizes(tokens, heads, half)
        grid = (triton.cdiv(tokens, block_t), triton.cdiv(heads, heads_per_prog))
        wrap_triton(_rotary_kernel)[grid](
            x,
            cos,
            sin,
            tokens,
            heads,
            half,
            x.stride(0),
            x.stride(1),
            x.stride(2),
            cos.stride(0),
            cos.stride(1),
            sin.stride(0),
            sin.stride(1),
            heads_per_prog,
            BLOCK_T=block_t,
            BLOCK_R=block_r,
        )


def check_rotary_args(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Raise ValueError unless x is a floating [T, H, d] and cos/sin are floating tables [T, r/2] with r <= d."""
    if x.dim() != 3 or not x.is_floating_point():
        raise ValueError(f"x must be a 3-D floating tensor [tokens, heads, head_dim], got {x.dtype} {tuple(x.shape)}")
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


def rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Plain-torch rotate-half rotary, in place: x [T, H, d] fp32/fp16/bf16, cos/sin fp32 [T, r/2] -> x.

    With x1 = x[..., :r/2], x2 = x[..., r/2:r]: x1 <- x1*cos - x2*sin, x2 <- x2*cos + x1*sin (in fp32);
    dims r..d are left untouched.
    """
    check_rotary_args(x, cos, sin)
    half = cos.shape[1]
    if x.numel() == 0 or half == 0:
        return x
    cos = cos.to(device=x.device, dtype=torch.float32)[:, None, :]
    sin = sin.to(device=x.device, dtype=torch.float32)[:, None, :]
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    f1, f2 = x1.float(), x2.float()
    out1 = f1 * cos - f2 * sin
    out2 = f2 * cos + f1 * sin
    x1.copy_(out1)
    x2.copy_(out2)
    return x


def rotary_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Triton rotate-half rotary, in place: x [T, H, d] fp32/fp16/bf16 (any strides), cos/sin fp32 [T, r/2] -> x."""
    check_rotary_args(x, cos, sin)
    cos = cos.to(device=x.device, dtype=torch.float32)
    sin = sin.to(device=x.device, dtype=torch.float32)
    _rotary_op(x, cos, sin)
    return x
