"""Where FP8's embedding error comes from: the bundled all-MiniLM-L6-v2 in float32 with its blocks' Linear layers
fake-quantized (an e4m3 round trip in float32) under several scalings, each set of embeddings compared by cosine
with the float32 ones. Runs on the CPU in about a minute.

    python bench/fp8_error.py
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import embzoo
from embzoo.modeling.fp8_linear import E4M3, E4M3_MAX

# (label, weight group, input group): a group of 0 = one scale per row (weight: output channel, input: token);
# None = that side stays float32
SCHEMES = [
    ("weights per channel, inputs per token (load_in_fp8)", 0, 0),
    ("weights per channel only", 0, None),
    ("inputs per token only", None, 0),
    ("weights and inputs per 1x128 group", 128, 128),
    ("weights and inputs per 1x32 group", 32, 32),
]


def fake_e4m3(x: torch.Tensor, group: int) -> torch.Tensor:
    """x rounded through e4m3 with one scale per `group` consecutive values of its last dim (0: per row)."""
    rows = x.reshape(-1, group or x.shape[-1])
    scale = rows.abs().amax(1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return ((rows / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).float() * scale).reshape(x.shape)


class FakeFp8(nn.Module):
    def __init__(self, linear: nn.Linear, weight_group: int | None, input_group: int | None):
        super().__init__()
        w = linear.weight.detach()
        self.weight = w if weight_group is None else fake_e4m3(w, weight_group)
        self.bias, self.input_group = linear.bias, input_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x if self.input_group is None else fake_e4m3(x, self.input_group), self.weight, self.bias)


def texts() -> list[str]:
    """The demo sentences and 120 random-word texts of 5..119 words drawn from them (seed 0)."""
    demo = resources.files("embzoo.data").joinpath("demo_sentences.txt").read_text(encoding="utf-8")
    lines = [line for line in demo.splitlines() if line.strip()]
    words, rng = " ".join(lines).split(), np.random.default_rng(0)
    return lines + [" ".join(rng.choice(words, size=int(rng.integers(5, 120)))) for _ in range(120)]


@torch.inference_mode()
def main() -> None:
    model, inputs = embzoo.load(device="cpu", dtype="float32"), texts()
    reference = model.encode(inputs, convert_to_tensor=True, normalize=True)
    blocks = model.model.backbone.layers
    originals = {name: m for name, m in blocks.named_modules() if isinstance(m, nn.Linear)}
    print(f"all-MiniLM-L6-v2, {len(inputs)} texts, cosine to float32:")
    for label, weight_group, input_group in SCHEMES:
        for name, linear in originals.items():
            blocks.set_submodule(name, FakeFp8(linear, weight_group, input_group))
        cos = (model.encode(inputs, convert_to_tensor=True, normalize=True) * reference).sum(1)
        print(f"  {label:54s} min {cos.min():.4f}  mean {cos.mean():.4f}")


if __name__ == "__main__":
    main()
