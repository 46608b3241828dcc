"""Quantized weights for the transformer blocks' Linear layers (qkv, out, up, down): bitsandbytes ones the way
transformers' BitsAndBytesConfig sets them up, or FP8; embeddings, norms, poolers and heads stay in high precision.

- "8bit": LLM.int8() `Linear8bitLt`, int8 weights with one fp16 scale per output row
  (`has_fp16_weights=False`); activation columns with a value above 6.0 (transformers' `llm_int8_threshold`
  default) are multiplied unquantized, the rest in int8.
- "nf4": `Linear4bit` with NF4 weights in blocks of 64, matmuls in `compute_dtype`; double quantization
  (8-bit block scales) is off by default, as in transformers (`bnb_4bit_use_double_quant=False`).
- "fp8": `Fp8Linear` (embzoo.modeling.fp8_linear), e4m3 weights with one float32 scale per output row,
  activations quantized per token at run time, bfloat16 out; compute capability 8.9+ on CUDA.

`quantize_linears` swaps and moves one block at a time (bitsandbytes quantizes a weight when its layer moves to a
device): the device never holds more than one block's weights in high precision.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from embzoo.modeling.block import Block
from embzoo.modeling.fp8_linear import Fp8Linear, check_fp8_device
from embzoo.modeling.layers import Linear

MODES = ("8bit", "nf4", "fp8")
INT8_THRESHOLD = 6.0


def _bitsandbytes() -> ModuleType:
    try:
        import bitsandbytes
    except ImportError as e:
        raise ImportError("8-bit and 4-bit weights need bitsandbytes: pip install 'embzoo[quant]'") from e
    return bitsandbytes


def _quantized(linear: nn.Linear, name: str, mode: str, compute_dtype: torch.dtype, double_quant: bool) -> nn.Module:
    """`linear` (block-relative `name`) as a layer of `mode`: an Fp8Linear quantized now ("fp8"), or a bitsandbytes
    layer holding its weight and bias (not copied), quantized when the layer is moved to a device (`.to(device)`, the
    host included)."""
    if mode == "fp8":
        return Fp8Linear(linear, name)
    bnb = _bitsandbytes()
    shape = (linear.in_features, linear.out_features, linear.bias is not None)
    if mode == "8bit":
        layer = bnb.nn.Linear8bitLt(*shape, has_fp16_weights=False, threshold=INT8_THRESHOLD, device="meta")
        layer.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(
            *shape, compute_dtype=compute_dtype, compress_statistics=double_quant, quant_type="nf4", device="meta"
        )
        layer.weight = bnb.nn.Params4bit(
            linear.weight.data, requires_grad=False, compress_statistics=double_quant, quant_type="nf4", module=layer
        )
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    return layer


def quantize_linears(
    module: nn.Module,
    mode: str,
    compute_dtype: torch.dtype,
    device: torch.device | str,
    *,
    double_quant: bool = False,
) -> nn.Module:
    """`module` (on the host, any float dtype) with every nn.Linear inside its Blocks replaced by a layer of `mode`
    ("8bit" | "nf4": bitsandbytes, quantized on `device`; "fp8": Fp8Linear, compute_dtype bfloat16); the rest moved
    to `device` in `compute_dtype`. double_quant applies to "nf4" only. Works in place and returns `module`."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; supported: {MODES}")
    if mode == "fp8":
        if compute_dtype != torch.bfloat16:
            raise ValueError(f"FP8 layers compute in bfloat16; got dtype {compute_dtype}: load with dtype='bfloat16'")
        check_fp8_device(device)
    else:
        _bitsandbytes()
    blocks = [m for m in module.modules() if isinstance(m, Block)]
    if not blocks:
        raise ValueError(f"{type(module).__name__} has no transformer blocks whose Linear layers could be quantized")
    for block in blocks:
        if mode != "fp8":  # bitsandbytes quantizes the compute-dtype weights; FP8 the weights as loaded (fp32: once)
            block.to(dtype=compute_dtype)
        for name, child in list(block.named_modules()):
            if type(child) in (nn.Linear, Linear):  # not the bitsandbytes layers (nn.Linear subclasses too)
                block.set_submodule(name, _quantized(child, name, mode, compute_dtype, double_quant))
        block.to(device)
    return module.to(device, compute_dtype)
