"""Declarative weight-name tables: checkpoint keys → embzoo parameter names, applied strictly.

A Rule is an anchored regex with named groups and a target template. Rules with `fuse` gather
several source tensors into one target (concatenated along dim 0 in the spelled-out order of the
`fuse` group's values); `reorder` permutes equal chunks of dim 0 (e.g. a fused [up; gate] projection
into embzoo's [gate; up]). Drop marks checkpoint keys that are consumed on purpose and discarded.

`plan` checks the correspondence from names and shapes alone (no tensor data) and returns the Targets;
an `Assembly` then fills them as their source tensors arrive, in any order (a shard at a time);
`plan`'s two steps, `claims` (the rules matching a key) and `assemble` (the targets the claimed keys make), also
serve `embzoo inspect`, which reports instead of raising. `Target.source_tensors` runs a Target backwards (export).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
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


@dataclass(frozen=True)
class Target:
    """One model parameter of `shape` and the checkpoint keys that fill it, in concatenation order
    (`rows`: each key's dim-0 size when several are fused; `reorder`: dim-0 chunks permuted at the end)."""

    name: str
    shape: tuple[int, ...]
    sources: tuple[str, ...]
    rows: tuple[int, ...] = ()
    reorder: tuple[int, ...] | None = None

    def part(self, out: torch.Tensor, key: str) -> torch.Tensor:
        """The view of `out` (this target's shape, before reordering) that source `key` fills."""
        if not self.rows:
            return out
        i = self.sources.index(key)
        return out.narrow(0, sum(self.rows[:i]), self.rows[i])

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """`out`, every source filled, in the model's layout."""
        if not self.reorder:
            return out
        chunks = out.chunk(len(self.reorder), dim=0)
        return torch.cat([chunks[i] for i in self.reorder], dim=0)

    def source_tensors(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """The inverse of filling and `finish`: each source key's tensor, from `tensor` in the model's layout (the
        chunk reorder undone, fused parts split by `rows`; views of `tensor` when there is no reorder)."""
        if self.reorder:
            chunks = tensor.chunk(len(self.reorder), dim=0)
            undo = sorted(range(len(self.reorder)), key=self.reorder.__getitem__)
            tensor = torch.cat([chunks[i] for i in undo], dim=0)
        parts = tensor.split(list(self.rows), dim=0) if self.rows else (tensor,)
        return dict(zip(self.sources, parts, strict=True))


class Assembly:
    """Targets filled from their source tensors, given one at a time in any order. Each target is allocated
    once, in `dtype` on `device` (None: the first source's), and each source is cast and copied straight
    into its rows: no tensor given is kept, and no intermediate copy is made."""

    def __init__(
        self, targets: Iterable[Target], dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> None:
        self.target_of = {key: t for t in targets for key in t.sources}
        self.dtype, self.device = dtype, device
        self.filling: dict[str, tuple[torch.Tensor, set[str]]] = {}
        self.state: dict[str, torch.Tensor] = {}  # the finished targets

    def add(self, key: str, tensor: torch.Tensor) -> None:
        """Copy source `key` into its target; the target moves to `state` once its last source is in."""
        target = self.target_of[key]
        if target.name not in self.filling:
            dtype, device = self.dtype or tensor.dtype, self.device or tensor.device
            self.filling[target.name] = torch.empty(target.shape, dtype=dtype, device=device), set(target.sources)
        out, left = self.filling[target.name]
        view = target.part(out, key)
        if tensor.shape != view.shape:
            raise WeightMismatch(
                f"{key}: got shape {tuple(tensor.shape)}, the checkpoint says {tuple(view.shape)}; "
                "a transform must return each tensor in its shape"
            )
        view.copy_(tensor)
        left.remove(key)
        if not left:
            self.state[target.name] = target.finish(self.filling.pop(target.name)[0])


@dataclass(frozen=True)
class Claim:
    """A rule that matches a checkpoint key: the parameter it fills (None for a Drop) and, when the rule fuses
    several keys into one parameter, the `fuse` group's value for this key."""

    rule: Rule | Drop
    target: str | None = None
    part: str | None = None


def claims(key: str, rules: Iterable[Rule | Drop]) -> list[Claim]:
    """Every rule matching `key`: one for a key the table handles (none: left over; several: ambiguous)."""
    found = []
    for rule in rules:
        m = rule.match(key)
        if m is None:
            continue
        if isinstance(rule, Drop):
            found.append(Claim(rule))
        else:
            part = m.group(rule.fuse[0]) if rule.fuse else None
            found.append(Claim(rule, rule.target.format(**m.groupdict()), part))
    return found


def assemble(
    claimed: Mapping[str, Claim], shapes: Mapping[str, tuple[int, ...]]
) -> tuple[dict[str, Target], dict[str, str]]:
    """The Targets that keys, each claimed by one rule, make (dropped keys make none), by parameter name, and
    what is wrong with each parameter that cannot be made (fused parts missing or not concatenating on dim 0,
    several keys for one parameter, dim 0 not splitting into the reorder's chunks)."""
    groups: dict[str, list[tuple[str, Claim]]] = {}
    for key, claim in claimed.items():
        if claim.target is not None:
            groups.setdefault(claim.target, []).append((key, claim))
    targets: dict[str, Target] = {}
    problems: dict[str, str] = {}
    for target, sources in groups.items():
        rule = sources[0][1].rule
        if rule.fuse:
            by_part = {claim.part: key for key, claim in sources}
            order = rule.fuse[1]
            if sorted(by_part) != sorted(order) or len(sources) != len(order):
                problems[target] = f"needs parts {list(order)}, found {sorted(by_part)}"
                continue
            keys = tuple(by_part[p] for p in order)
        elif len(sources) > 1:
            problems[target] = f"produced by several keys {[k for k, _ in sources]}"
            continue
        else:
            keys = (sources[0][0],)
        parts = [tuple(shapes[k]) for k in keys]
        if len(parts) > 1 and any(not s or s[1:] != parts[0][1:] for s in parts):
            problems[target] = f"parts {dict(zip(keys, parts, strict=True))} do not concatenate on dim 0"
            continue
        shape = (sum(s[0] for s in parts), *parts[0][1:]) if len(parts) > 1 else parts[0]
        if rule.reorder and shape[0] % len(rule.reorder):
            problems[target] = f"dim 0 of {shape} does not split into {len(rule.reorder)}"
            continue
        rows = tuple(p[0] for p in parts) if len(parts) > 1 else ()
        targets[target] = Target(target, shape, keys, rows, rule.reorder)
    return targets, problems


def plan(
    shapes: Mapping[str, tuple[int, ...]],
    rules: Iterable[Rule | Drop],
    expected: Mapping[str, tuple[int, ...]],
) -> list[Target]:
    """How checkpoint tensors (by name and shape; no data is read) make exactly the `expected` parameters.

    Every key must match exactly one rule and every expected name must be produced exactly once, with
    the expected shape (fused targets: parts concatenated on dim 0); otherwise one WeightMismatch lists
    everything missing, left over, ambiguous or misshapen. Keys matched by a Drop are in no Target.
    """
    rules = list(rules)
    claimed: dict[str, Claim] = {}
    leftover, ambiguous = [], []
    for key in sorted(shapes):
        found = claims(key, rules)
        if len(found) > 1:
            ambiguous.append(f"{key} (matches {[c.rule.pattern for c in found]})")
        elif not found:
            leftover.append(key)
        else:
            claimed[key] = found[0]
    targets, problems = assemble(claimed, shapes)

    produced = {name: t.shape for name, t in targets.items()}
    missing = sorted(set(expected) - set(produced))
    unexpected = sorted(set(produced) - set(expected))
    misshapen = [
        f"{n}: checkpoint {produced[n]} vs model {tuple(expected[n])}"
        for n in sorted(set(produced) & set(expected))
        if produced[n] != tuple(expected[n])
    ]
    report = [
        ("missing (model parameters no checkpoint tensor fills)", missing),
        ("left over (checkpoint tensors no rule consumes)", leftover),
        ("produced but not model parameters", unexpected),
        ("ambiguous (several rules match)", ambiguous),
        ("wrong shape", misshapen),
        ("inconsistent", [f"{target}: {problem}" for target, problem in problems.items()]),
    ]
    if any(items for _, items in report):
        lines = [f"  {title}: {items}" for title, items in report if items]
        raise WeightMismatch(
            "checkpoint does not match the model architecture:\n"
            + "\n".join(lines)
            + "\nCheck that config.json belongs to these weights; a key that is known but unused needs a "
            "Drop rule in the family's weight table."
        )
    return list(targets.values())
