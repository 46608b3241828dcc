"""Norm and activation factories: one place maps ArchConfig choices to torch modules; the blocks' fused residual
add + norm and Linear."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from embzoo import kernels
from embzoo.config import ArchConfig

ACTIVATIONS = {  # ArchConfig.activation names (and "tanh", for classification heads) → module
    "tanh": lambda: nn.Tanh(),
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
}


class OffsetRMSNorm(nn.Module):
    """x / rms(x) · (offset + w), all in float32, returned in x's dtype (Gemma's RMSNorm: offset 1)."""

    def __init__(self, size: int, eps: float, offset: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size))
        self.eps = eps
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return (y * (self.offset + self.weight.float())).to(x.dtype)


def make_norm(cfg: ArchConfig, size: int = 0, layer: bool = False) -> nn.Module:
    """The configured norm over the last dim (size, 0 = hidden_size): LayerNorm (bias per norm_bias) or
    RMSNorm (with norm_weight_offset, OffsetRMSNorm); layer=True forces a LayerNorm."""
    size = size or cfg.hidden_size
    if cfg.norm == "rms" and not layer:
        if cfg.norm_weight_offset:
            return OffsetRMSNorm(size, cfg.norm_eps, cfg.norm_weight_offset)
        return nn.RMSNorm(size, eps=cfg.norm_eps)
    return nn.LayerNorm(size, eps=cfg.norm_eps, bias=cfg.norm_bias)


def add_norm(norm: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(residual + x), residual + x) for x, residual [T, D] of one dtype: the norms make_norm builds run fused
    (kernels.add_norm, reading the module's weight, bias and eps); any other module (e.g. a wrapper an adapter library
    put in its place) runs as the add, then its forward."""
    if isinstance(norm, OffsetRMSNorm):
        return kernels.add_norm(x, residual, norm.weight, None, norm.eps, "rms", norm.offset)
    if isinstance(norm, nn.RMSNorm):
        return kernels.add_norm(x, residual, norm.weight, None, norm.eps, "rms", 0.0)
    if isinstance(norm, nn.LayerNorm):
        return kernels.add_norm(x, residual, norm.weight, norm.bias, norm.eps, "layer", 0.0)
    summed = residual + x
    return norm(summed), summed


def make_activation(cfg: ArchConfig) -> nn.Module:
    return ACTIVATIONS[cfg.activation]()


PACKED_LINEAR_ENV = "EMBZOO_CPU_PACKED_LINEAR"  # "0": plain nn.Linear on the CPU too


def _onednn_linear() -> bool:
    """Whether this torch has oneDNN's packed-weight linear (the ops Inductor's CPU freezing uses)."""
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(ops, name) for name in ("_reorder_linear_weight", "_linear_pointwise")
    )


_ONEDNN_LINEAR = _onednn_linear()


class Linear(nn.Linear):
    """nn.Linear that, in CPU float32 inference (no grad), multiplies by a oneDNN-packed copy of its weight, made on
    first use and remade when the weight changes in place through autograd's view (copy_ under no_grad, as embzoo's
    adapter merges do, load_state_dict, .to()); writes through `weight.data` bypass the version counter and are not
    seen (peft's merge_and_unload on this module: set $EMBZOO_CPU_PACKED_LINEAR=0 first). On a 2-core EPYC, MiniLM's
    four GEMMs ran 1.12× MKL's speed at 4096 tokens and the same at 640 to 3000, for one more copy of the weight in
    host memory ($EMBZOO_CPU_PACKED_LINEAR=0 turns it off). Elsewhere
    exactly nn.Linear: CUDA, other dtypes, training, under torch.compile, and weights made under inference_mode (an
    inference tensor tracks no version, so a packed copy could not follow in-place writes such as adapter merges)."""

    _packed: tuple[tuple[int, int], torch.Tensor] | None = None  # ((weight data_ptr, version), packed weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if not (
            _ONEDNN_LINEAR
            and x.device.type == "cpu"
            and x.dtype == w.dtype == torch.float32
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()  # Inductor cannot lower the packed op (and packs weights itself)
            and not w.is_inference()
            and os.environ.get(PACKED_LINEAR_ENV) != "0"
        ):
            return super().forward(x)
        stamp = (w.data_ptr(), w._version)
        if self._packed is None or self._packed[0] != stamp:
            self._packed = (stamp, torch.ops.mkldnn._reorder_linear_weight(w, None))
        flat = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(flat, self._packed[1], self.bias, "none", [], "")
        return out.view(*x.shape[:-1], out.shape[-1])

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_packed"}  # oneDNN's opaque tensor has no storage

    def _apply(self, fn: Callable, recurse: bool = True) -> Linear:
        self._packed = None  # moved or cast: the packed copy is stale (and would hold host memory)
        return super()._apply(fn, recurse)
