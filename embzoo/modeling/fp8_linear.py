"""FP8 (e4m3) Linear layers: the weight quantized once per output channel, the activations per token at run time,
multiplied by torch._scaled_mm with their float32 scales into bfloat16 (the scheme of transformers' FbgemmFp8Config
and vLLM's dynamic "fp8"). GPUs of compute capability 8.9+ (Ada, Hopper) run it on FP8 tensor cores; the CPU runs
it too, slowly (the tests do).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
MIN_CAPABILITY = (8, 9)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float → (e4m3 [M, K], float32 scales [M, 1]) with x ≈ q · scale: each row's largest |x| maps to 448
    (a row of zeros to zeros)."""
    x = x.float()
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return (x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


@functools.cache
def _compiled_quantize_rows() -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """quantize_rows as one fused kernel (Inductor), for CUDA: eager it reads and writes the activations ~5 times."""
    return torch.compile(quantize_rows, dynamic=True, fullgraph=True)


def check_fp8_device(device: torch.device | str) -> None:
    """ValueError when `device` is a GPU without FP8 matmuls (compute capability below 8.9)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < MIN_CAPABILITY:
        major, minor = torch.cuda.get_device_capability(device)
        raise ValueError(
            f"FP8 matmuls (torch._scaled_mm) need a GPU of compute capability 8.9+ (Ada, Hopper or newer); "
            f"{torch.cuda.get_device_name(device)} has {major}.{minor}: load without load_in_fp8 (dtype='bfloat16')"
        )


class Fp8Linear(nn.Module):
    """y = x Wᵀ + b with W in e4m3 (a float32 scale per output row) and x quantized per token at run time:
    x [..., in] → bfloat16 [..., out]. in_features and out_features must be multiples of 16 (torch._scaled_mm).
    Moves to another device apply; dtype casts do not (the weight stays e4m3, its scales float32)."""

    def __init__(self, linear: nn.Linear, name: str = "Linear"):
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape
        if self.in_features % 16 or self.out_features % 16:
            raise ValueError(
                f"{name} is {self.in_features} → {self.out_features}: FP8 matmuls need both sizes to be multiples of "
                "16; load this model without load_in_fp8"
            )
        weight, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight", weight)  # [out, in] e4m3
        self.register_buffer("weight_scale", scale.view(1, -1))  # float32 [1, out]
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] == 0:
            return x.new_zeros(*x.shape[:-1], self.out_features, dtype=torch.bfloat16)
        q, scale = (_compiled_quantize_rows() if flat.is_cuda else quantize_rows)(flat)
        y = torch._scaled_mm(q, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, out_dtype=torch.bfloat16)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, e4m3"

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Fp8Linear:
        device = fn(torch.empty(0, device=self.weight.device)).device  # where fn sends a tensor; its dtype is ignored
        for name, buffer in self._buffers.items():
            if buffer is not None:
                self._buffers[name] = buffer.to(device)
        return self
