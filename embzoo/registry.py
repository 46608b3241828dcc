"""model_type → family module, collected from embzoo/conversion/families/*.py (their MODEL_TYPES).

Several families may share a model_type (jina-bert-v2 configs say "bert"); such a family declares
CONFIG_MATCH, config.json values it requires (e.g. position_embedding_type "alibi"), and is tried
before the family that claims the model_type unconditionally.

Remote-code checkpoints may carry no model_type at all (jina-reranker-v2's config.json has none); a family
that declares AUTO_CONFIG, the name of a remote-code config class, claims every config.json whose auto_map
"AutoConfig" names that class ("<repo>--<module>.<Class>" or "<module>.<Class>"), before any model_type
claim. Its HEADS are keyed by that class name (`head_key`). Families sharing a remote-code config class
(jina-reranker-v2 and jina-embeddings-v3 both use XLMRobertaFlashConfig) tell their configs apart with
AUTO_CONFIG_MATCH, config.json values the claim requires; those are tried first.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType

from embzoo.config import UnsupportedConfig
from embzoo.conversion import families


@cache
def family_modules() -> tuple[ModuleType, ...]:
    """Every family module, in name order."""
    names = sorted(info.name for info in pkgutil.iter_modules(families.__path__) if not info.name.startswith("_"))
    return tuple(importlib.import_module(f"{families.__name__}.{name}") for name in names)


@cache
def _families() -> dict[str, list[ModuleType]]:
    table: dict[str, list[ModuleType]] = {}
    for module in family_modules():
        for model_type in module.MODEL_TYPES:
            table.setdefault(model_type, []).append(module)
    for modules in table.values():
        modules.sort(key=lambda m: not getattr(m, "CONFIG_MATCH", None))  # conditional claims first
    return table


def supported_model_types() -> list[str]:
    return sorted(_families())


def auto_config_class(config: dict) -> str | None:
    """The class name auto_map's "AutoConfig" entry points at (remote code), else None."""
    ref = (config.get("auto_map") or {}).get("AutoConfig")
    return ref.rsplit(".", 1)[-1] if isinstance(ref, str) else None


def _claimed_by_auto_map(config: dict) -> ModuleType | None:
    name = auto_config_class(config)
    claims = [m for m in family_modules() if name and getattr(m, "AUTO_CONFIG", None) == name]
    claims.sort(key=lambda m: not getattr(m, "AUTO_CONFIG_MATCH", None))  # conditional claims first
    matches = (m for m in claims if all(config.get(k) == v for k, v in getattr(m, "AUTO_CONFIG_MATCH", {}).items()))
    return next(matches, None)


def family_for(config: dict) -> ModuleType:
    """The family module that converts a checkpoint with this config.json."""
    claimed = _claimed_by_auto_map(config)
    if claimed is not None:
        return claimed
    model_type = config.get("model_type")
    table = _families()
    for module in table.get(model_type, []):
        if all(config.get(k) == v for k, v in getattr(module, "CONFIG_MATCH", {}).items()):
            return module
    auto = sorted(m.AUTO_CONFIG for m in family_modules() if hasattr(m, "AUTO_CONFIG"))
    raise UnsupportedConfig(
        f"unknown architecture: model_type {model_type!r} (architectures {config.get('architectures')}, "
        f"auto_map AutoConfig class {auto_config_class(config)!r}); supported model_types: {sorted(table)}, "
        f"remote-code config classes: {auto}"
    )


def head_key(config: dict) -> str:
    """The key of this checkpoint's classification-head rules in its family's HEADS: the AUTO_CONFIG class
    for a config claimed through auto_map, else config.json's model_type."""
    claimed = _claimed_by_auto_map(config)
    return claimed.AUTO_CONFIG if claimed is not None else config["model_type"]
