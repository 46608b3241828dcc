"""model_type → family module, collected from embzoo/conversion/families/*.py (their MODEL_TYPES)."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType

from embzoo.config import UnsupportedConfig
from embzoo.conversion import families


@cache
def _families() -> dict[str, ModuleType]:
    table: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(families.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{families.__name__}.{info.name}")
        for model_type in module.MODEL_TYPES:
            table[model_type] = module
    return table


def supported_model_types() -> list[str]:
    return sorted(_families())


def family_for(config: dict) -> ModuleType:
    """The family module that converts a checkpoint with this config.json."""
    model_type = config.get("model_type")
    table = _families()
    if model_type not in table:
        raise UnsupportedConfig(
            f"unknown architecture: model_type {model_type!r} (architectures {config.get('architectures')}); "
            f"supported model_types: {sorted(table)}"
        )
    return table[model_type]
