"""Stream a checkpoint into a state dict one weights file at a time, converting as it is read.

Names and shapes are checked against the weight table first (from the files' headers, no data read).
Then each shard is opened in turn: every tensor the table consumes is read, passed through the optional
`transform`, and cast and copied straight into its target, allocated once in the target dtype on the
target device (a fused target whose parts span shards is filled across them); the shard is closed
before the next one is opened. Peak host memory is about the converted state plus one shard, never a
second copy of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from embzoo.conversion.rules import Assembly, Drop, Rule, plan
from embzoo.conversion.snapshot import read_weights, weight_files

# (checkpoint tensor name, tensor as stored) -> tensor of the same shape, e.g. a merged LoRA delta
Transform = Callable[[str, torch.Tensor], torch.Tensor]


def load_state(
    folder: Path,
    rules: Iterable[Rule | Drop],
    expected: Mapping[str, tuple[int, ...]],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    transform: Transform | None = None,
) -> dict[str, torch.Tensor]:
    """The folder's weights as exactly the `expected` parameters, in `dtype` on `device`.

    Raises WeightMismatch (before reading any tensor data) when names or shapes don't correspond.
    `transform(name, tensor)`, if given, sees every consumed checkpoint tensor exactly once, right after
    it is read (stored dtype, on CPU) and before it is cast or fused; dropped tensors are never read.
    """
    files = weight_files(folder)
    assembly = Assembly(plan({n: s for f in files for n, s in f.shapes.items()}, rules, expected), dtype, device)
    for file in files:
        for name, tensor in read_weights(file, [n for n in file.shapes if n in assembly.target_of]):
            assembly.add(name, transform(name, tensor) if transform else tensor)
            del tensor  # the last one too: nothing may keep the shard mapped once it is closed
    return assembly.state
