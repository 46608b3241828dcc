"""Stream a checkpoint into a state dict one weights file at a time, converting as it is read.

Names and shapes are checked against the weight table first (from the files' headers, no data read).
Then each shard is opened in turn: every tensor the table consumes is read, passed through the optional
`transform`, cast to the target dtype and moved to the target device right away, and every target whose
sources are complete is built; the shard is closed before the next one is opened. Fused targets whose
parts span shards wait (already converted) until their last part is read. Peak host memory is about
the converted state plus one shard, never a second copy of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from embzoo.conversion.rules import Drop, Rule, plan
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
    targets = plan({n: s for f in files for n, s in f.shapes.items()}, rules, expected)
    target_of = {key: t for t in targets for key in t.sources}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for name, tensor in read_weights(file, [n for n in file.shapes if n in target_of]):
            if transform is not None:
                tensor = transform(name, tensor)
            target = target_of[name]
            parts = pending.setdefault(target.name, {})
            parts[name] = tensor.to(device=device, dtype=dtype, copy=True)  # a copy: nothing keeps the file mapped
            del tensor
            if len(parts) == len(target.sources):
                state[target.name] = target.build([parts[k] for k in target.sources])
                del pending[target.name]
    return state
