"""`embzoo inspect`: how embzoo reads a checkpoint, for porting one. Shows the family, the ArchConfig, the
sentence-transformers pipeline, side files, one row per checkpoint tensor (the rule that claims it) and one per
model parameter no tensor fills. Nothing is loaded (names, shapes and dtypes come from the file headers) and a
mismatch is reported, never raised: a half-ported family shows what is left to do.

Each tensor is matched against every table loading reads the file with, as loading does: the family's WEIGHTS
with its classification-head rules (filling head.* for a *ForSequenceClassification checkpoint, dropped
otherwise), a learned pooler's table (parameters pooler.*) and a Stanford ColBERT's projection (colbert.*). A key
must be claimed or dropped by each of them; the row names the parameter it fills.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from embzoo.config import ArchConfig, UnsupportedConfig
from embzoo.conversion.load import (
    HEAD_PREFIX,
    checkpoint_rules,
    classification_head,
    is_classifier,
    param_shapes,
    pooler_rules,
)
from embzoo.conversion.output_heads import STANFORD_LINEAR, STANFORD_RULES, is_stanford_colbert
from embzoo.conversion.peft import adapter_snapshot, is_adapter
from embzoo.conversion.rules import Claim, Drop, Rule, assemble, claims
from embzoo.conversion.snapshot import PipelineSpec, Snapshot, read_snapshot, resolve, weight_files
from embzoo.modeling.backbone import Backbone
from embzoo.registry import family_for

SIDE_FILES = ("colbert_linear.pt", "sparse_linear.pt", "artifact.metadata", "adapter_config.json")
# row statuses; the upper-case ones are what a port still has to fix
CLAIMED, DROPPED = "claimed", "dropped"
UNCLAIMED, AMBIGUOUS, MISMATCH, MISSING = "UNCLAIMED", "AMBIGUOUS", "MISMATCH", "MISSING"


@dataclass(frozen=True)
class Row:
    """A checkpoint tensor (`key`; its stored shape and dtype) or, for MISSING, a model parameter no tensor fills
    (key None; the parameter's shape). `param`: the embzoo parameter it fills; `rule`: the pattern that matched."""

    key: str | None
    shape: tuple[int, ...]
    dtype: str | None
    status: str
    param: str | None = None
    rule: str | None = None
    note: str = ""  # fused part, reordered chunks, or what is wrong


@dataclass(frozen=True)
class Inspection:
    """What `inspect_checkpoint` found; `arch` is None when the family refuses the config (`arch_error` says why),
    and then no row is MISSING or MISMATCH for want of the model's parameters."""

    folder: Path
    family: str
    arch: ArchConfig | None
    arch_error: str | None
    pipeline: PipelineSpec
    side_files: tuple[str, ...]
    rows: tuple[Row, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the ArchConfig as its non-default fields, the pipeline as `pipeline_summary`."""
        return {
            "folder": str(self.folder),
            "family": self.family,
            "arch": arch_fields(self.arch) if self.arch else None,
            "arch_error": self.arch_error,
            "pipeline": pipeline_summary(self.pipeline),
            "side_files": list(self.side_files),
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }


@dataclass(frozen=True)
class _Table:
    name: str  # "backbone" (its targets are the parameters' names), "pooler" or "colbert" ("<name>.<target>")
    rules: list[Rule | Drop]
    expected: dict[str, tuple[int, ...]] | None  # its parameters' shapes (None: unknown)

    @property
    def prefix(self) -> str:
        return "" if self.name == "backbone" else self.name + "."


def inspect_checkpoint(src: str | Path) -> Inspection:
    """Inspect a model folder or hub id (a PEFT adapter folder: its base model's weights). Raises UnsupportedConfig
    when no family claims config.json, SnapshotError when files are missing or malformed."""
    root = resolve(src)
    snap = adapter_snapshot(root)[0] if is_adapter(root) else read_snapshot(root)
    family = family_for(snap.config)
    try:
        converted = snap.converted is not None  # an embzoo folder states its ArchConfig
        arch = ArchConfig.from_dict(snap.converted["arch"]) if converted else family.to_arch(snap.config)
        arch_error = None
    except UnsupportedConfig as error:
        arch, arch_error = None, str(error)
    files = weight_files(snap.weights_dir or snap.model_dir)
    shapes = {n: s for f in files for n, s in f.shapes.items()}
    dtypes = {n: d for f in files for n, d in f.dtypes.items()}
    rows = _rows(_tables(snap, family, arch, shapes), shapes, dtypes)
    return Inspection(
        root, family.__name__.rsplit(".", 1)[-1], arch, arch_error, snap.pipeline, _side_files(root), rows
    )


def _tables(snap: Snapshot, family: ModuleType, arch: ArchConfig | None, shapes: dict) -> list[_Table]:
    """The weight tables that read this checkpoint, with their parameters' shapes (built on the meta device)."""
    with_head = is_classifier(snap.config)
    expected = None
    if arch is not None:
        with torch.device("meta"):
            backbone = Backbone(arch)
            head = classification_head(family, snap.config, arch.hidden_size) if with_head else None
        expected = param_shapes(backbone) | (param_shapes(head, HEAD_PREFIX) if head else {})
    stanford = is_stanford_colbert(snap)
    ignore = [Drop(STANFORD_LINEAR)] if stanford else []  # as embzoo.load: the ColBERT projection is read apart
    tables = [_Table("backbone", checkpoint_rules(snap, family, with_head, ignore), expected)]
    if hasattr(family, "pooler"):
        with torch.device("meta"):
            pooler = family.pooler(snap.config)
        tables.append(_Table("pooler", pooler_rules(family), param_shapes(pooler)))
    if stanford:
        found = arch is not None and "linear.weight" in shapes  # else colbert_head's error says what it needs
        linear = {"linear.weight": (shapes["linear.weight"][0], arch.hidden_size)} if found else None
        tables.append(_Table("colbert", STANFORD_RULES, linear))
    return tables


def _rows(tables: list[_Table], shapes: dict, dtypes: dict) -> tuple[Row, ...]:
    """One row per checkpoint key, then one per MISSING parameter. A key matched by several rules of a table, or
    filled by several tables, is AMBIGUOUS; one that some table has no rule for is UNCLAIMED."""
    rows: dict[str, Row] = {}
    claimed: list[dict[str, Claim]] = [{} for _ in tables]
    for key in sorted(shapes, key=_natural):
        found = [(i, claims(key, table.rules)) for i, table in enumerate(tables)]
        fills = [(i, c) for i, cs in found for c in cs if c.target is not None]
        unclaimed = [tables[i].name for i, cs in found if not cs]
        base = dict(key=key, shape=shapes[key], dtype=dtypes[key])
        if any(len(cs) > 1 for _, cs in found) or len(fills) > 1:
            patterns = [c.rule.pattern for _, cs in found for c in cs]
            rows[key] = Row(**base, status=AMBIGUOUS, note=f"matches {patterns}")
        elif unclaimed:
            where = f"no rule in the {', '.join(unclaimed)} table" if len(tables) > 1 else ""
            rows[key] = Row(**base, status=UNCLAIMED, note=where)
        elif fills:
            claimed[fills[0][0]][key] = fills[0][1]
        else:
            rows[key] = Row(**base, status=DROPPED, rule=found[0][1][0].rule.pattern)
    missing = []
    for table, keys in zip(tables, claimed, strict=True):
        targets, problems = assemble(keys, shapes)
        for key, claim in keys.items():
            target = targets.get(claim.target)
            problem = problems.get(claim.target) or _misfit(target, table.expected)
            status, note = (MISMATCH, problem) if problem else (CLAIMED, _how(claim))
            param = table.prefix + claim.target
            rows[key] = Row(key, shapes[key], dtypes[key], status, param, claim.rule.pattern, note)
        if table.expected is not None:
            left = sorted(set(table.expected) - set(targets) - set(problems), key=_natural)
            missing += [Row(None, table.expected[p], None, MISSING, table.prefix + p) for p in left]
    return tuple(rows[key] for key in sorted(rows, key=_natural)) + tuple(missing)


def _misfit(target: Any, expected: dict[str, tuple[int, ...]] | None) -> str:
    """What is wrong with a target made from the checkpoint, given the model's parameters ("" if nothing)."""
    if target is None or expected is None:
        return ""
    if target.name not in expected:
        return f"{target.name} is not a parameter of the model"
    if tuple(expected[target.name]) != target.shape:
        return f"{target.name}: checkpoint {target.shape} vs model {tuple(expected[target.name])}"
    return ""


def _how(claim: Claim) -> str:
    rule = claim.rule
    notes = [f"fused: {claim.part} of {', '.join(rule.fuse[1])}"] if rule.fuse else []
    return "; ".join(notes + ([f"chunks reordered {rule.reorder}"] if rule.reorder else []))


def _natural(name: str) -> list[Any]:
    """Sort key: layer 2 before layer 10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _side_files(root: Path) -> tuple[str, ...]:
    """SIDE_FILES in the folder or one level down (module folders, task adapters), relative to it."""
    found = {p for name in SIDE_FILES for p in (*root.glob(name), *root.glob(f"*/{name}"))}
    return tuple(sorted(str(p.relative_to(root)) for p in found))


def arch_fields(arch: ArchConfig) -> dict[str, Any]:
    """The sizes (head_dim and num_kv_heads as derived) and every other field that differs from its default."""
    return {
        f.name: getattr(arch, f.name)
        for f in dataclasses.fields(arch)
        if f.default is dataclasses.MISSING or getattr(arch, f.name) != f.default
    }


def pipeline_summary(pipe: PipelineSpec) -> dict[str, Any]:
    """The sentence-transformers pipeline's stated parts (unset ones left out); Dense as "in→out activation"."""
    dense = [f"{d.in_features}→{d.out_features} {(d.activation or 'Identity').rsplit('.', 1)[-1]}" for d in pipe.dense]
    stated = {
        "pooling": "+".join(pipe.pooling) if pipe.pooling else None,
        "include_prompt": pipe.include_prompt if not pipe.include_prompt else None,
        "dense": dense or None,
        "normalize": pipe.normalize,
        "max_seq_length": pipe.max_seq_length or pipe.tokenizer_max_length,
        "do_lower_case": pipe.do_lower_case or None,
        "prompts": pipe.prompts or None,
        "default_prompt_name": pipe.default_prompt_name,
        "colbert": pipe.colbert or None,
        "splade": pipe.splade,
        "max_active_dims": pipe.max_active_dims,
    }
    return {k: v for k, v in stated.items() if v is not None}


def format_inspection(found: Inspection) -> str:
    """The inspection as text: a header, the tensor table, the MISSING parameters and a count per status."""
    arch = " ".join(f"{k}={v}" for k, v in arch_fields(found.arch).items()) if found.arch else None
    lines = [
        f"folder: {found.folder}",
        f"family: {found.family}",
        f"arch: {arch}" if arch else f"arch: refused: {found.arch_error}",
        "pipeline: " + (" ".join(f"{k}={v}" for k, v in pipeline_summary(found.pipeline).items()) or "none"),
        "side files: " + (", ".join(found.side_files) or "none"),
        "",
    ]
    tensors = [r for r in found.rows if r.key is not None]
    table = [("tensor", "shape", "dtype", "claim")]
    for r in tensors:
        claim = r.param if r.status in (CLAIMED, MISMATCH) else r.status
        claim = f"{claim}  ({r.note})" if r.note else claim
        table.append((r.key, str(list(r.shape)), r.dtype, f"{r.status}: {claim}" if r.status == MISMATCH else claim))
    widths = [max(len(t[i]) for t in table) for i in range(3)]
    lines += ["  ".join([*(c.ljust(w) for c, w in zip(t[:3], widths, strict=True)), t[3]]) for t in table]
    missing = [r for r in found.rows if r.status == MISSING]
    if missing:
        lines += ["", f"MISSING (model parameters no tensor fills): {len(missing)}"]
        lines += [f"  {r.param}  {list(r.shape)}" for r in missing]
    counts: dict[str, int] = {}
    for r in tensors:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = f"{len(tensors)} tensors: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    lines += ["", summary + (f"; {len(missing)} parameters MISSING" if missing else "")]
    return "\n".join(lines)
