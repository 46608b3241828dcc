"""Choose between the Triton kernels and the plain-torch reference implementations."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

IMPLEMENTATIONS = ("auto", "triton", "reference")
ENV_VAR = "EMBZOO_KERNELS"


def _triton_importable() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


HAS_TRITON = _triton_importable()

_override: ContextVar[str | None] = ContextVar("embzoo_kernels", default=None)


def _validate(name: str) -> str:
    if name not in IMPLEMENTATIONS:
        allowed = ", ".join(IMPLEMENTATIONS)
        raise ValueError(f"unknown kernel implementation {name!r}; expected one of {allowed}")
    return name


@contextmanager
def use(name: str) -> Iterator[None]:
    """Select the kernel implementation ("auto", "triton" or "reference") within a `with` block."""
    token = _override.set(_validate(name))
    try:
        yield
    finally:
        _override.reset(token)


def current() -> str:
    """The selected implementation: the innermost `use(...)`, else $EMBZOO_KERNELS, else "auto"."""
    name = _override.get()
    if name is None:
        name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    return _validate(name)


def interpreting() -> bool:
    """Whether Triton runs in interpreter mode (kernels on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether the Triton implementation should handle `x` (and the other tensor inputs, None = absent);
    raises if "triton" is forced but cannot run.

    The Triton kernels have no backward: where autograd needs a gradient of any input, "auto" takes the reference.
    """
    name = current()
    if name == "reference":
        return False
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *others))
    if name == "auto":
        return x.is_cuda and HAS_TRITON and not needs_grad
    if needs_grad:
        raise RuntimeError("kernel implementation 'triton' has no backward; use 'auto' or 'reference' for autograd")
    if not HAS_TRITON:
        raise RuntimeError("kernel implementation 'triton' was requested but triton is not installed")
    if not x.is_cuda and not interpreting():
        raise RuntimeError(f"kernel implementation 'triton' needs a CUDA tensor (got {x.device}) or TRITON_INTERPRET=1")
    return True
