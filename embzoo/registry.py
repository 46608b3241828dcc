"""model_type → family module, collected from embzoo/conversion/families/*.py (their MODEL_TYPES).

Several families may share a model_type (jina-bert-v2 configs say "bert"); such a family declares
CONFIG_MATCH, config.json values it requires (e.g. position_embedding_type "alibi"), and is tried
before the family that claims the model_type unconditionally.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType

from embzoo.config import UnsupportedConfig
from embzoo.conversion import families


@cache
def _families() -> dict[str, list[ModuleType]]:
    table: dict[str, list[ModuleType]] = {}
    for info in pkgutil.iter_modules(families.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{families.__name__}.{info.name}")
        for model_type in module.MODEL_TYPES:
            table.setdefault(model_type, []).append(module)
    for modules in table.values():
        modules.sort(key=lambda m: not getattr(m, "CONFIG_MATCH", None))  # conditional claims first
    return table


def supported_model_types() -> list[str]:
    return sorted(_families())


def family_for(config: dict) -> ModuleType:
    """The family module that converts a checkpoint with this config.json."""
    model_type = config.get("model_type")
    table = _families()
    for module in table.get(model_type, []):
        if all(config.get(k) == v for k, v in getattr(module, "CONFIG_MATCH", {}).items()):
            return module
    raise UnsupportedConfig(
        f"unknown architecture: model_type {model_type!r} (architectures {config.get('architectures')}); "
        f"supported model_types: {sorted(table)}"
    )
