"""The weight-table engine: fuse, reorder, drop, and one error listing every mismatch."""

import pytest
import torch

from embzoo.conversion.rules import Drop, Rule, WeightMismatch, apply


def run(state, rules, expected):
    return apply(state, state.__getitem__, rules, {k: tuple(v) for k, v in expected.items()})


def test_fuse_concatenates_in_the_spelled_order_and_reorder_swaps_chunks():
    state = {"a.k": torch.full((1, 2), 2.0), "a.q": torch.full((1, 2), 1.0), "up_gate": torch.arange(4.0)[:, None]}
    rules = [
        Rule(r"^a\.(?P<part>q|k)$", "qk", fuse=("part", ("q", "k"))),
        Rule(r"^up_gate$", "gate_up", reorder=(1, 0)),
    ]
    out = run(state, rules, {"qk": (2, 2), "gate_up": (4, 1)})
    assert out["qk"][:, 0].tolist() == [1.0, 2.0]
    assert out["gate_up"][:, 0].tolist() == [2.0, 3.0, 0.0, 1.0]


def test_one_error_lists_missing_leftover_and_ambiguous():
    state = {"x": torch.zeros(1), "y": torch.zeros(1), "z": torch.zeros(1)}
    rules = [Rule(r"^x$", "a"), Rule(r"^[xy]$", "b"), Drop(r"^q$")]
    with pytest.raises(WeightMismatch) as err:
        run(state, rules, {"a": (1,), "c": (1,)})
    text = str(err.value)
    assert "missing" in text and "'c'" in text
    assert "left over" in text and "'z'" in text
    assert "ambiguous" in text and "x (matches" in text
