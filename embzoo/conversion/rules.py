"""Declarative weight-name tables: checkpoint keys → embzoo parameter names, applied strictly.

A Rule is an anchored regex with named groups and a target template. Rules with `fuse` gather
several source tensors into one target (concatenated along dim 0 in the spelled-out order of the
`fuse` group's values); `reorder` permutes equal chunks of dim 0 (e.g. a fused [up; gate] projection
into embzoo's [gate; up]). Drop marks checkpoint keys that are consumed on purpose and discarded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch


class WeightMismatch(ValueError):
    """The checkpoint's tensors and the model's parameters don't correspond one to one."""


@dataclass(frozen=True)
class Rule:
    """Map keys matching `pattern` to `target` (str.format with the pattern's named groups)."""

    pattern: str
    target: str
    fuse: tuple[str, tuple[str, ...]] | None = None  # (group name, order of its values), concat on dim 0
    reorder: tuple[int, ...] | None = None  # split dim 0 into len(reorder) equal chunks, emit in this order

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def match(self, key: str) -> re.Match | None:
        return self._regex.match(key)


@dataclass(frozen=True)
class Drop:
    """Checkpoint keys matching `pattern` are known and intentionally unused."""

    pattern: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def match(self, key: str) -> re.Match | None:
        return self._regex.match(key)


def dropped(rules: Iterable[Rule | Drop]) -> list[Drop]:
    """The same keys, consumed and discarded (e.g. a classification head loaded as an embedder)."""
    return [r if isinstance(r, Drop) else Drop(r.pattern) for r in rules]


def apply(
    keys: Iterable[str],
    get: Callable[[str], torch.Tensor],
    rules: Iterable[Rule | Drop],
    expected: Mapping[str, tuple[int, ...]],
) -> dict[str, torch.Tensor]:
    """Convert checkpoint tensors to a state dict with exactly the `expected` names and shapes.

    Every key must match exactly one rule and every expected name must be produced exactly once;
    otherwise one WeightMismatch lists everything missing, left over, ambiguous or misshapen.
    """
    rules = list(rules)
    groups: dict[str, list[tuple[Rule, str, str | None]]] = {}
    leftover, ambiguous = [], []
    for key in sorted(keys):
        hits = [(r, m) for r in rules if (m := r.match(key))]
        if len(hits) > 1:
            ambiguous.append(f"{key} (matches {[r.pattern for r, _ in hits]})")
            continue
        if not hits:
            leftover.append(key)
            continue
        rule, m = hits[0]
        if isinstance(rule, Drop):
            continue
        target = rule.target.format(**m.groupdict())
        part = m.group(rule.fuse[0]) if rule.fuse else None
        groups.setdefault(target, []).append((rule, key, part))

    out: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for target, sources in groups.items():
        rule = sources[0][0]
        if rule.fuse:
            by_part = {part: key for _, key, part in sources}
            order = rule.fuse[1]
            if sorted(by_part) != sorted(order) or len(sources) != len(order):
                problems.append(f"{target}: needs parts {list(order)}, found {sorted(by_part)}")
                continue
            tensor = torch.cat([get(by_part[p]) for p in order], dim=0)
        elif len(sources) > 1:
            problems.append(f"{target}: produced by several keys {[k for _, k, _ in sources]}")
            continue
        else:
            tensor = get(sources[0][1])
        if rule.reorder:
            if tensor.shape[0] % len(rule.reorder):
                problems.append(f"{target}: dim 0 of {tuple(tensor.shape)} does not split into {len(rule.reorder)}")
                continue
            chunks = tensor.chunk(len(rule.reorder), dim=0)
            tensor = torch.cat([chunks[i] for i in rule.reorder], dim=0)
        out[target] = tensor

    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected))
    misshapen = [
        f"{n}: checkpoint {tuple(out[n].shape)} vs model {tuple(expected[n])}"
        for n in sorted(set(out) & set(expected))
        if tuple(out[n].shape) != tuple(expected[n])
    ]
    report = [
        ("missing (model parameters no checkpoint tensor fills)", missing),
        ("left over (checkpoint tensors no rule consumes)", leftover),
        ("produced but not model parameters", unexpected),
        ("ambiguous (several rules match)", ambiguous),
        ("wrong shape", misshapen),
        ("inconsistent", problems),
    ]
    if any(items for _, items in report):
        lines = [f"  {title}: {items}" for title, items in report if items]
        raise WeightMismatch(
            "checkpoint does not match the model architecture:\n"
            + "\n".join(lines)
            + "\nCheck that config.json belongs to these weights; a key that is known but unused needs a "
            "Drop rule in the family's weight table."
        )
    return out
