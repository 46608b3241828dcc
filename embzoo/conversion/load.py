"""Build embzoo modules from a snapshot: family config translation + strict weight conversion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from types import ModuleType

import torch
from torch import nn

from embzoo.config import ArchConfig
from embzoo.conversion.rules import Drop, Rule, Target, dropped, plan
from embzoo.conversion.snapshot import DenseSpec, Snapshot, weight_files
from embzoo.conversion.stream import Transform, load_state
from embzoo.conversion.task_lora_peft import read_task_adapters
from embzoo.modeling.backbone import Backbone
from embzoo.modeling.heads import ClassificationHead, Dense, dense_activation
from embzoo.registry import family_for, head_key

DENSE_WEIGHTS = [Rule(r"^linear\.(?P<p>weight|bias)$", "linear.{p}")]
HEAD_PREFIX = "head."
# an embzoo folder (embzoo.conversion.convert) stores the backbone under "backbone." and a classification head
# under "head.", the modules' own names; its other tensors keep the source checkpoint's names for their loaders
CONVERTED_BACKBONE = [Rule(r"^backbone\.(?P<n>.+)$", "{n}")]
CONVERTED_HEAD = Rule(r"^head\.(?P<n>.+)$", "head.{n}")
CONVERTED_OTHERS = Drop(r"^(?!backbone\.|head\.)")


def is_classifier(config: dict) -> bool:
    """True for *ForSequenceClassification checkpoints (cross-encoders / rerankers)."""
    return any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or ())


def param_shapes(module: nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer of `module`'s state dict by name (with `prefix`) → its shape."""
    return {prefix + n: tuple(t.shape) for n, t in module.state_dict().items()}


def load_backbone(
    snapshot: Snapshot,
    *,
    attn_backend: str | None = None,
    with_head: bool | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    transform: Transform | None = None,
    ignore: Sequence[Drop] = (),
) -> tuple[Backbone, ClassificationHead | None]:
    """The backbone (and the classification head when the checkpoint is a classifier) in `dtype` on
    `device`, streamed from the checkpoint one shard at a time (see embzoo.conversion.stream).

    Strict: raises WeightMismatch listing missing and left-over tensors. `transform(name, tensor)` is
    applied to each consumed checkpoint tensor as it is read, before fusing (LoRA merging). `ignore`: checkpoint
    keys another loader reads (jina-reranker-v3's projector), skipped here. Task LoRA kept as one PEFT adapter
    per task beside the weights (jina-embeddings-v3's -hf layout) is read too (embzoo.conversion.task_lora_peft).
    """
    family = family_for(snapshot.config)
    with_head = is_classifier(snapshot.config) if with_head is None else with_head
    if snapshot.converted is not None:  # an embzoo folder: its ArchConfig and its own parameter names
        arch, adapters = ArchConfig.from_dict(snapshot.converted["arch"]), None
    else:
        arch = family.to_arch(snapshot.config)
        adapters = read_task_adapters(family, snapshot.model_dir, arch)
        if adapters is not None:  # scalings are folded into the factors: lora_alpha / lora_rank = 1
            arch = replace(arch, lora_tasks=adapters.tasks, lora_rank=adapters.rank, lora_alpha=adapters.rank)
    rules = checkpoint_rules(snapshot, family, with_head, ignore)
    with torch.device("meta"):
        backbone = Backbone(arch, attn_backend)
        head = classification_head(family, snapshot.config, arch.hidden_size) if with_head else None
    expected = param_shapes(backbone) | (param_shapes(head, HEAD_PREFIX) if head else {})
    side = adapters.state if adapters is not None else {}  # factors from the task adapter folders
    expected = {n: s for n, s in expected.items() if n not in side}
    folder = snapshot.weights_dir or snapshot.model_dir
    state = load_state(folder, rules, expected, dtype=dtype, device=device, transform=transform)
    state |= {n: t.to(dtype=dtype, device=device) for n, t in side.items()}
    head_state = {n[len(HEAD_PREFIX) :]: state.pop(n) for n in list(state) if n.startswith(HEAD_PREFIX)}
    backbone.load_state_dict(state, strict=True, assign=True)
    if head is not None:
        head.load_state_dict(head_state, strict=True, assign=True)
    return backbone, head


def weight_rules(family: ModuleType, config: dict, with_head: bool) -> list[Rule | Drop]:
    """The family's weight table for a checkpoint with this config.json: WEIGHTS, and its classification-head rules
    (filling head.*) when `with_head`, else those keys dropped."""
    head_rules = family.HEADS[head_key(config)]
    return [*family.WEIGHTS, *(head_rules if with_head else dropped(head_rules))]


def checkpoint_rules(
    snapshot: Snapshot, family: ModuleType, with_head: bool, ignore: Sequence[Drop] = ()
) -> list[Rule | Drop]:
    """The rules reading the backbone (and classification head) from the snapshot's weights: the family's table
    (and `ignore`: keys another loader reads), or an embzoo folder's own names."""
    if snapshot.converted is not None:
        return [*CONVERTED_BACKBONE, CONVERTED_HEAD if with_head else Drop(CONVERTED_HEAD.pattern), CONVERTED_OTHERS]
    return [*weight_rules(family, snapshot.config, with_head), *ignore]


def weight_targets(snapshot: Snapshot, backbone: Backbone) -> list[Target]:
    """How the checkpoint's tensors fill `backbone`'s parameters (from names and shapes; no tensor data is read); for
    an embzoo folder, how its source checkpoint's did (the names and shapes it recorded)."""
    rules = weight_rules(family_for(snapshot.config), snapshot.config, with_head=False)
    if snapshot.converted is not None:
        shapes = {n: tuple(s) for n, s in snapshot.converted["renamed"].items()}
    else:
        shapes = {n: s for f in weight_files(snapshot.weights_dir or snapshot.model_dir) for n, s in f.shapes.items()}
    return plan(shapes, rules, param_shapes(backbone))


def load_pooler(
    snapshot: Snapshot, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> nn.Module | None:
    """The family's learned pooler (NV-Embed's latent attention) in `dtype` on `device`; None for families
    without one (`pooler(hf)` builds it, POOLER_WEIGHTS fills it from the keys matching POOLER_PREFIX).

    Strict over those keys: raises WeightMismatch listing missing and left-over tensors.
    """
    family = family_for(snapshot.config)
    if not hasattr(family, "pooler"):
        return None
    with torch.device("meta"):
        pooler = family.pooler(snapshot.config)
    folder = snapshot.weights_dir or snapshot.model_dir
    state = load_state(folder, pooler_rules(family), param_shapes(pooler), dtype=dtype, device=device)
    pooler.load_state_dict(state, strict=True, assign=True)
    return pooler


def pooler_rules(family: ModuleType) -> list[Rule | Drop]:
    """A learned pooler's weight table: POOLER_WEIGHTS, and the keys outside POOLER_PREFIX (the backbone's) dropped."""
    return [*family.POOLER_WEIGHTS, Drop("^(?!" + family.POOLER_PREFIX.removeprefix("^") + ")")]


def classification_head(family: ModuleType, config: dict, hidden_size: int) -> ClassificationHead:
    """The family's classification head; `head_config(hf)` (optional) gives its options, else BERT's."""
    options = family.head_config(config) if hasattr(family, "head_config") else {}
    return ClassificationHead(hidden_size, num_labels(config), **options)


def num_labels(config: dict) -> int:
    """Outputs of a classifier checkpoint's head: id2label's size, else num_labels (transformers' default 2)."""
    return len(config["id2label"]) if config.get("id2label") else int(config.get("num_labels", 2))


def load_dense(spec: DenseSpec, *, device: torch.device | str = "cpu") -> Dense:
    """A sentence-transformers Dense module from its folder, fp32 on `device`."""
    with torch.device("meta"):
        dense = Dense(spec.in_features, spec.out_features, spec.bias, dense_activation(spec.activation))
    state = load_state(spec.path, DENSE_WEIGHTS, param_shapes(dense), device=device)
    dense.load_state_dict(state, strict=True, assign=True)
    return dense


def check_max_seq_length(stated: int | None, positions: int) -> None:
    """Raise ValueError when a stated max_seq_length exceeds the model's position limit (None passes)."""
    if stated is not None and stated > positions:
        raise ValueError(
            f"max_seq_length {stated} exceeds the model's position limit {positions}; "
            f"pass embzoo.load(..., max_seq_length={positions}) or less"
        )
