"""Position encodings computed per batch: rotary cos/sin tables and ALiBi slopes."""

from __future__ import annotations

import functools
import math

import torch

from embzoo.config import ArchConfig
from embzoo.modeling.batch import PackedBatch


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi head slopes for any head count (powers of two: start^(k+1), start = 2^(-8/H); otherwise the
    closest lower power of two's slopes, then every other slope of the next power of two)."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (k + 1) for k in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    lower = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(lower) + power_of_two(2 * lower)[0::2][: num_heads - lower]


@functools.cache
def alibi_tensor(num_heads: int, device: torch.device) -> torch.Tensor:
    """alibi_slopes as float32 [H] on device (cached: built once per device)."""
    return torch.tensor(alibi_slopes(num_heads), dtype=torch.float32, device=device)


def rotary_tables(cfg: ArchConfig, batch: PackedBatch, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cos, sin float32 [T, rotary_dim / 2] for NeoX rotate-half rotary at base `theta`.

    ntk_static (GTE): base θ·f and frequencies divided by f^(2/r). ntk_dynamic (NomicBert): a sequence
    longer than rope_original_max gets base θ·(f·len/max − (f − 1))^(r/(r−2)), from its own length only.
    """
    r = cfg.rotary_dim
    device = batch.input_ids.device
    exponents = torch.arange(0, r, 2, device=device, dtype=torch.float32) / r
    positions = batch.positions.to(torch.float32)
    f = cfg.rope_factor
    if cfg.rope_scaling == "ntk_dynamic":
        lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).to(torch.float32)
        per_token = torch.repeat_interleave(lengths, lengths.long(), output_size=positions.shape[0])
        grown = (f * per_token / cfg.rope_original_max - (f - 1)) ** (r / (r - 2))
        base = theta * torch.where(per_token > cfg.rope_original_max, grown, torch.ones_like(grown))
        inv_freq = 1.0 / base[:, None] ** exponents  # [T, r/2]: each token its sequence's base
    elif cfg.rope_scaling == "ntk_static":
        inv_freq = 1.0 / (theta * f) ** exponents / f ** (2 / r)
    else:
        inv_freq = 1.0 / theta**exponents
    angles = positions[:, None] * inv_freq
    return angles.cos(), angles.sin()
