"""The weight-table engine: fuse, reorder, drop, and one error listing every mismatch."""

import pytest
import torch

from embzoo.conversion.rules import Assembly, Drop, Rule, Target, WeightMismatch, plan


def run(state, rules, expected):
    """In-memory tensors through the plan and the assembly, as the streaming loader drives them."""
    assembly = Assembly(plan({k: tuple(t.shape) for k, t in state.items()}, rules, expected))
    for key in assembly.target_of:
        assembly.add(key, state[key])
    return assembly.state


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


def test_plan_sizes_fused_targets_from_shapes_alone():
    """Planning needs only names and shapes (safetensors headers): fused parts add up on dim 0."""
    rules = [Rule(r"^a\.(?P<part>q|k)$", "qk", fuse=("part", ("q", "k")))]
    shapes = {"a.k": (1, 3), "a.q": (2, 3)}
    assert plan(shapes, rules, {"qk": (3, 3)}) == [Target("qk", (3, 3), ("a.q", "a.k"), (2, 1))]
    with pytest.raises(WeightMismatch, match=r"qk: checkpoint \(3, 3\) vs model \(4, 3\)"):
        plan(shapes, rules, {"qk": (4, 3)})
    with pytest.raises(WeightMismatch, match=r"inconsistent: .*qk: parts .* do not concatenate on dim 0"):
        plan({"a.k": (1, 4), "a.q": (2, 3)}, rules, {"qk": (3, 3)})


def test_source_tensors_undo_fusion_and_reorder_exactly():
    """Export runs each Target backwards: uneven fused parts split by rows, then a chunk reorder undone."""
    g = torch.Generator().manual_seed(0)
    state = {f"{p}.w": torch.randn(n, 2, generator=g) for p, n in (("q", 4), ("k", 2), ("v", 2))}
    state |= {"up_gate": torch.randn(6, 2, generator=g), "a.up": torch.randn(2, 3, generator=g)}
    state |= {"a.gate": torch.randn(2, 3, generator=g)}
    rules = [
        Rule(r"^(?P<p>q|k|v)\.w$", "qkv", fuse=("p", ("q", "k", "v"))),
        Rule(r"^up_gate$", "gate_up", reorder=(1, 2, 0)),  # not its own inverse
        Rule(r"^a\.(?P<p>up|gate)$", "gu", fuse=("p", ("up", "gate")), reorder=(1, 0)),
    ]
    targets = plan(
        {k: tuple(t.shape) for k, t in state.items()}, rules, {"qkv": (8, 2), "gate_up": (6, 2), "gu": (4, 3)}
    )
    built = run(state, rules, {t.name: t.shape for t in targets})
    back = {k: t for target in targets for k, t in target.source_tensors(built[target.name]).items()}
    assert back.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(back[key], tensor), key
