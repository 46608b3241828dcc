"""Residual add then RMSNorm or LayerNorm over the last dim, fused: (norm(residual + x), residual + x) in one pass."""

import torch
import torch.nn.functional as F
from torch.library import triton_op, wrap_triton

from embzoo.kernels.dispatch import HAS_TRITON

NORM_KINDS = ("rms", "layer")
MAX_DIM = 8192  # widest row the Triton kernel holds whole in registers; wider rows take the reference

if HAS_TRITON:
    import triton
    import triton.language as tl

    _TILE = 4096  # elements of one program's [BLOCK_T, BLOCK_D] tile

    @triton.jit
    def _add_norm_kernel(
        x_ptr,
        r_ptr,
        w_ptr,
        b_ptr,
        normed_ptr,
        summed_ptr,
        T,
        D,
        stride_xt,
        stride_rt,
        eps,
        offset,
        LAYER: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        col_ok = cols < D
        mask = (rows < T)[:, None] & col_ok[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_xt + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + rows[:, None] * stride_rt + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        # torch's add rounds the fp32 sum to the dtype once; the norm reads that rounded sum, as the unfused modules do
        s = (r + x).to(summed_ptr.dtype.element_ty)
        out = rows[:, None] * D + cols[None, :]
        tl.store(summed_ptr + out, s, mask=mask)
        s = s.to(tl.float32)
        if LAYER:
            s = tl.where(mask, s - (tl.sum(s, axis=1) / D)[:, None], 0.0)
        inv = 1.0 / tl.sqrt(tl.sum(s * s, axis=1) / D + eps)
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32) + offset
        y = s * inv[:, None] * w[None, :]
        if HAS_BIAS:
            y += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(normed_ptr + out, y.to(normed_ptr.dtype.element_ty), mask=mask)

    def add_norm_launch_sizes(tokens: int, dim: int) -> tuple[int, int, int]:
        """(BLOCK_T, BLOCK_D, num_warps): the whole row (dim ≤ MAX_DIM) and about _TILE elements per program."""
        block_d = triton.next_power_of_2(dim)
        block_t = max(1, min(triton.next_power_of_2(tokens), _TILE // block_d))
        return block_t, block_d, min(16, max(4, block_t * block_d // 512))

    @triton_op("embzoo::add_norm", mutates_args=())
    def _add_norm_op(
        x: torch.Tensor,
        residual: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        eps: float,
        kind: str,
        offset: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, dim = x.shape
        normed = torch.empty((tokens, dim), dtype=x.dtype, device=x.device)
        summed = torch.empty((tokens, dim), dtype=x.dtype, device=x.device)
        if tokens == 0 or dim == 0:
            return normed, summed
        block_t, block_d, num_warps = add_norm_launch_sizes(tokens, dim)
        wrap_triton(_add_norm_kernel)[(triton.cdiv(tokens, block_t),)](
            x,
            residual,
            weight,
            weight if bias is None else bias,  # never read without HAS_BIAS
            normed,
            summed,
            tokens,
            dim,
            x.stride(0),
            residual.stride(0),
            eps,
            offset,
            LAYER=kind == "layer",
            HAS_BIAS=bias is not None,
            BLOCK_T=block_t,
            BLOCK_D=block_d,
            num_warps=num_warps,
        )
        return normed, summed


def _check_args(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kind: str, offset: float
) -> None:
    if kind not in NORM_KINDS:
        raise ValueError(f"unknown norm kind {kind!r}; expected one of {', '.join(NORM_KINDS)}")
    if kind == "layer" and offset:
        raise ValueError(f"a weight offset applies to kind 'rms' only, got offset {offset} with kind 'layer'")
    if kind == "rms" and bias is not None:
        raise ValueError("kind 'rms' takes no bias; pass bias=None")
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a 2-D floating tensor [tokens, dim], got {x.dtype} {tuple(x.shape)}")
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(
            f"residual must match x: {x.dtype} {tuple(x.shape)}, got {residual.dtype} {tuple(residual.shape)}"
        )
    for name, t in (("x", x), ("residual", residual)):
        if t.shape[1] > 1 and t.stride(1) != 1:
            raise ValueError(f"{name}'s last dim must be contiguous (stride 1), got strides {t.stride()}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.shape != x.shape[1:] or not t.is_floating_point()):
            raise ValueError(f"{name} must be a floating [dim] = [{x.shape[1]}] tensor, got {t.dtype} {tuple(t.shape)}")


def add_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    kind: str,
    offset: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch (autograd-friendly) (normed, summed): summed = residual + x in x.dtype, normed = norm(summed) in
    fp32 (fp64 for fp64 x), rounded once to x.dtype. x, residual [T, D] fp32/fp16/bf16 -> two [T, D] x.dtype.

    What the unfused modules compute (torch 2.13, CPU): nn.RMSNorm and F.rms_norm (fused aten kernel) and embzoo's
    OffsetRMSNorm all compute in fp32 with the weight applied before one rounding, so "rms" matches them bit for bit
    in every dtype; "layer" matches nn.LayerNorm bit for bit in fp32 and to one rounding step in fp16/bf16 (aten's
    half LayerNorm reorders its fp32 arithmetic).
    """
    _check_args(x, residual, weight, bias, kind, offset)
    summed = residual + x
    s = summed.to(torch.promote_types(x.dtype, torch.float32))
    w = weight.to(device=x.device, dtype=s.dtype)
    if kind == "rms":
        y = F.rms_norm(s, (x.shape[1],), eps=eps) * (offset + w)
    else:
        y = F.layer_norm(s, (x.shape[1],), w, None if bias is None else bias.to(device=x.device, dtype=s.dtype), eps)
    return y.to(x.dtype), summed


def add_norm_triton(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    kind: str,
    offset: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of add_norm_ref (no backward): x and residual read once (any row stride), normed and summed
    written once (new, contiguous), one launch. Rows wider than MAX_DIM and fp64 take add_norm_ref."""
    _check_args(x, residual, weight, bias, kind, offset)
    if x.shape[1] > MAX_DIM or x.dtype == torch.float64:
        return add_norm_ref(x, residual, weight, bias, eps, kind, offset)
    weight = weight.to(device=x.device).contiguous()
    bias = None if bias is None else bias.to(device=x.device).contiguous()
    return _add_norm_op(x, residual, weight, bias, float(eps), kind, float(offset))
