"""Lenient readers for config.json values that checkpoints write inconsistently."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from embzoo.config import UnsupportedConfig

T = TypeVar("T")
# transformers' activation names (ACT2FN keys) that embzoo runs → ArchConfig.activation
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no", "none", "null", "")


def flag(config: dict[str, Any], key: str, default: bool) -> bool:
    """A boolean that may be written as a bool, a number or a string ("true", "False", "1")."""
    value = config.get(key, default)
    if isinstance(value, bool | int | float) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise UnsupportedConfig(f"config key {key!r} = {value!r} is not a boolean; use true or false")


def choice(config: dict[str, Any], key: str, default: str, table: Mapping[str, T], family: str) -> T:
    """table[config[key]] (default when absent); an unlisted value raises naming the supported ones."""
    value = config.get(key, default)
    if value not in table:
        raise UnsupportedConfig(f"{family}: {key} {value!r}; supported: {sorted(table)}")
    return table[value]


def sizes(config: dict[str, Any]) -> dict[str, int]:
    """ArchConfig's size fields from transformers' standard config keys."""
    return dict(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        intermediate_size=config["intermediate_size"],
    )
