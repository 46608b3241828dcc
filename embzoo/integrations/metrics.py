"""Prometheus metrics without a client library: counters, gauges and histograms with labels, rendered in the
text exposition format (version 0.0.4). Updated from one thread (the server's event loop)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KINDS = ("counter", "gauge", "histogram")

Labels = tuple[tuple[str, str], ...]


@dataclass
class _Series:
    """One label set's value: a number (counter, gauge), or bucket counts, sum and count (histogram)."""

    value: float = 0.0
    buckets: list[int] = field(default_factory=list)  # observations ≤ each bound (not cumulative)
    count: int = 0


@dataclass
class _Family:
    name: str
    kind: str
    help: str
    bounds: tuple[float, ...] = ()  # histogram bucket upper bounds, ascending (+Inf is implied)
    series: dict[Labels, _Series] = field(default_factory=dict)

    def get(self, labels: dict[str, str]) -> _Series:
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        if key not in self.series:
            self.series[key] = _Series(buckets=[0] * len(self.bounds))
        return self.series[key]


def _labels(pairs: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = [*pairs, *extra]
    if not items:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in items)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(items, escaped, strict=True)) + "}"


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(int(x)) if float(x).is_integer() else repr(float(x))


class Metrics:
    """A registry of metric families: declare each once, then inc / set / observe it with keyword labels."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def declare(self, name: str, kind: str, help: str, buckets: tuple[float, ...] = ()) -> None:
        """A new family; histograms need ascending bucket bounds."""
        if kind not in KINDS:
            raise ValueError(f"unknown metric kind {kind!r}; allowed: {KINDS}")
        if (kind == "histogram") != bool(buckets) or list(buckets) != sorted(buckets):
            raise ValueError(f"{name}: histograms (only) take ascending bucket bounds; got {buckets}")
        self._families[name] = _Family(name, kind, help, tuple(float(b) for b in buckets))

    def _family(self, name: str, kind: str) -> _Family:
        family = self._families[name]
        if family.kind != kind:
            raise ValueError(f"{name} is a {family.kind}, not a {kind}")
        return family

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add to a counter (amount ≥ 0)."""
        if amount < 0:
            raise ValueError(f"{name}: a counter only goes up; got {amount}")
        self._family(name, "counter").get(labels).value += amount

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        self._family(name, "gauge").get(labels).value = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation in a histogram."""
        family = self._family(name, "histogram")
        series = family.get(labels)
        for i, bound in enumerate(family.bounds):
            if value <= bound:
                series.buckets[i] += 1
                break
        series.value += value
        series.count += 1

    def render(self) -> str:
        """Every family in the text exposition format: HELP and TYPE lines, then `name{labels} value` samples
        (histograms: cumulative `_bucket{le=...}`, `_sum`, `_count`)."""
        lines = []
        for f in self._families.values():
            lines += [f"# HELP {f.name} {f.help}", f"# TYPE {f.name} {f.kind}"]
            for key, s in sorted(f.series.items()):
                if f.kind != "histogram":
                    lines.append(f"{f.name}{_labels(key)} {_number(s.value)}")
                    continue
                total = 0
                for bound, n in zip((*f.bounds, math.inf), (*s.buckets, s.count - sum(s.buckets)), strict=True):
                    total += n
                    lines.append(f"{f.name}_bucket{_labels(key, (('le', _number(bound)),))} {total}")
                lines.append(f"{f.name}_sum{_labels(key)} {_number(s.value)}")
                lines.append(f"{f.name}_count{_labels(key)} {s.count}")
        return "\n".join(lines) + "\n"
