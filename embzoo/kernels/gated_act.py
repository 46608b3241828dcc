"""Gated activation of a fused [gate | up] projection: act(gate) · up in one pass, one rounding at the end."""

import torch
import torch.nn.functional as F
from torch.library import triton_op, wrap_triton

from embzoo.kernels.dispatch import HAS_TRITON

# activation name (ArchConfig.activation) -> the torch function both implementations follow
GATE_ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}

if HAS_TRITON:
    import triton
    import triton.language as tl

    _TILE = 4096  # elements per half-tile of one program
    _MAX_BLOCK_I = 1024

    @triton.jit
    def _gated_act_kernel(
        x_ptr,
        out_ptr,
        T,
        INTER,
        stride_xt,
        stride_ot,
        ACTIVATION: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_I: tl.constexpr,
    ):
        rows = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
        mask = (rows < T)[:, None] & (cols < INTER)[None, :]
        gate_ptrs = x_ptr + rows[:, None] * stride_xt + cols[None, :]
        g = tl.load(gate_ptrs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(gate_ptrs + INTER, mask=mask, other=0.0).to(tl.float32)
        # torch's formulas (aten's CPU/CUDA kernels), in fp32
        if ACTIVATION == "silu":
            a = g / (1.0 + tl.exp(-g))
        elif ACTIVATION == "gelu":
            a = 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476))
        elif ACTIVATION == "gelu_tanh":
            inner = 0.7978845608028654 * (g + 0.044715 * g * g * g)
            a = 0.5 * g * (2.0 - 2.0 / (1.0 + tl.exp(2.0 * inner)))  # 1 + tanh(z) = 2 - 2 / (1 + e^2z)
        else:
            a = tl.maximum(g, 0.0)
        out_ptrs = out_ptr + rows[:, None] * stride_ot + cols[None, :]
        tl.store(out_ptrs, (a * u).to(out_ptr.dtype.element_ty), mask=mask)

    def gated_act_launch_sizes(tokens: int, inter: int) -> tuple[int, int]:
        """(BLOCK_T, BLOCK_I): up to _MAX_BLOCK_I columns and about _TILE elements per half-tile."""
        block_i = min(triton.next_power_of_2(inter), _MAX_BLOCK_I)
        block_t = max(1, min(triton.next_power_of_2(tokens), _TILE // block_i))
        return block_t, block_i

    @triton_op("embzoo::gated_act", mutates_args=())
    def _gated_act_op(x: torch.Tensor, activation: str) -> torch.Tensor:
        tokens, inter = x.shape[0], x.shape[1] // 2
        out = torch.empty((tokens, inter), dtype=x.dtype, device=x.device)
        if tokens == 0 or inter == 0:
            return out
        block_t, block_i = gated_act_launch_sizes(tokens, inter)
        grid = (triton.cdiv(tokens, block_t), triton.cdiv(inter, block_i))
        wrap_triton(_gated_act_kernel)[grid](
            x,
            out,
            tokens,
            inter,
            x.stride(0),
            out.stride(0),
            ACTIVATION=activation,
            BLOCK_T=block_t,
            BLOCK_I=block_i,
        )
        return out


def _check_args(x: torch.Tensor, activation: str) -> None:
    if activation not in GATE_ACTIVATIONS:
        raise ValueError(f"unknown gate activation {activation!r}; expected one of {', '.join(GATE_ACTIVATIONS)}")
    if x.dim() != 2 or not x.is_floating_point() or x.shape[1] % 2:
        raise ValueError(
            f"x must be a 2-D floating tensor [tokens, 2 * intermediate] ([gate | up] per row), "
            f"got {x.dtype} {tuple(x.shape)}"
        )
    if x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError(f"x's last dim must be contiguous (stride 1), got strides {x.stride()}; pass x.contiguous()")


def gated_act_ref(x: torch.Tensor, activation: str) -> torch.Tensor:
    """Plain-torch (autograd-friendly) act(gate) · up: x [T, 2I] = [gate | up] fp32/fp16/bf16 -> [T, I] x.dtype.

    act and the product are computed in fp32 (fp64 for fp64 x) from the upcast halves, rounded once to x.dtype.
    """
    _check_args(x, activation)
    gate, up = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)
    return (GATE_ACTIVATIONS[activation](gate) * up).to(x.dtype)


def gated_act_triton(x: torch.Tensor, activation: str) -> torch.Tensor:
    """Triton act(gate) · up (no backward): x [T, 2I] = [gate | up], any row stride -> contiguous [T, I] x.dtype.

    Same numerics as gated_act_ref up to fp32 rounding of act (tanh via exp); one rounding to x.dtype.
    """
    _check_args(x, activation)
    return _gated_act_op(x, activation)
