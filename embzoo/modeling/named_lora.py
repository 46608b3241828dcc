"""Named LoRA adapters (user PEFT adapters) kept beside a model's Linear weights and selected per call.

Each adapter holds, for the Linear layers it targets, factors a [R, in] and b [out, R] with b @ a its whole
update (scalings folded into b; see embzoo.conversion.peft.LoraMerge.place). Adapters may differ in rank,
scaling and target modules: a layer an adapter does not target runs its base weight. `active(name)` adds
(x aᵀ) bᵀ to each targeted layer's output per batch through a forward hook; `merge(name)` writes b @ a into the
weights for good (summed in float32, cast once) and drops the adapter. Under float16 / bfloat16 weights the factors
stay float32 and the update is computed and added in float32, then rounded once, as peft does by default
(autocast_adapter_dtype).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

Factors = Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # Linear module path → (a [R, in], b [out, R])


class NamedLoRA:
    """Named adapters on the Linear layers of `root` and the one the hooks add (None = base weights)."""

    def __init__(self, root: nn.Module):
        self.root = root
        self.factors: dict[str, dict[nn.Linear, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.current: str | None = None
        self._hooked: set[nn.Linear] = set()

    @property
    def names(self) -> list[str]:
        return list(self.factors)

    def add(self, name: str, factors: Factors) -> None:
        """Attach adapter `name`: its factors on each layer's device, in its weight dtype or float32 if wider."""
        if name in self.factors:
            raise ValueError(f"adapter {name!r} is already loaded; loaded adapters: {self.names}")
        layers = {}
        for path, (a, b) in factors.items():
            module = self.root.get_submodule(path)
            if not isinstance(module, nn.Linear):
                raise TypeError(f"adapter {name!r}: {path} is a {type(module).__name__}, not a Linear layer")
            like = {"dtype": torch.promote_types(module.weight.dtype, torch.float32), "device": module.weight.device}
            layers[module] = a.to(**like), b.to(**like)
            if module not in self._hooked:
                module.register_forward_hook(self._hook)
                self._hooked.add(module)
        self.factors[name] = layers

    def check(self, name: str) -> None:
        """ValueError naming the loaded adapters when `name` is not one of them."""
        if name not in self.factors:
            raise ValueError(f"unknown adapter {name!r}; loaded adapters: {self.names} (no adapter: the base weights)")

    def _hook(self, module: nn.Linear, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor | None:
        if self.current is None or module not in self.factors[self.current]:
            return None
        a, b = self.factors[self.current][module]
        return (out.to(a.dtype) + F.linear(F.linear(args[0].to(a.dtype), a), b)).to(out.dtype)

    @contextmanager
    def active(self, name: str | None) -> Iterator[None]:
        """Run with adapter `name` added on the fly (None: base weights)."""
        if name is not None:
            self.check(name)
        previous, self.current = self.current, name
        try:
            yield
        finally:
            self.current = previous

    @torch.no_grad()
    def merge(self, name: str) -> None:
        """Write adapter `name` into the weights (W + b @ a in float32, cast once); it is then the base and no
        longer selectable."""
        self.check(name)
        for module, (a, b) in self.factors.pop(name).items():
            module.weight.copy_(module.weight.float() + b.float() @ a.float())
