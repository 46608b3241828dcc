"""Lenient config booleans."""

import pytest

from embzoo.config import UnsupportedConfig
from embzoo.conversion.config_values import flag


@pytest.mark.parametrize(
    "value, expected", [(True, True), (False, False), ("true", True), ("False", False), ("1", True), (0, False)]
)
def test_flag_accepts_the_spellings_checkpoints_use(value, expected):
    assert flag({"k": value}, "k", not expected) is expected


def test_flag_default_and_garbage():
    assert flag({}, "k", True) is True
    with pytest.raises(UnsupportedConfig, match="'k' = 'maybe' is not a boolean"):
        flag({"k": "maybe"}, "k", False)


def test_choice_maps_through_the_table_and_names_the_supported_values():
    from embzoo.conversion.config_values import choice

    table = {"gelu": "gelu", "gelu_new": "gelu_tanh"}
    assert choice({"act": "gelu_new"}, "act", "gelu", table, "fam") == "gelu_tanh"
    assert choice({}, "act", "gelu", table, "fam") == "gelu"
    with pytest.raises(UnsupportedConfig, match=r"fam: act 'mish'; supported: \['gelu', 'gelu_new'\]"):
        choice({"act": "mish"}, "act", "gelu", table, "fam")
