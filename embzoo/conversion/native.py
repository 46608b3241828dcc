"""An embzoo backbone's weights back in transformers' own checkpoint layout, for exports that transformers'
classes load without remote code.

The names come from inverting the family's weight table (each Target run backwards: chunk reorders undone, fused
tensors split into their source keys), so no family has a reverse table. They are checked against what
transformers' save_pretrained writes for the config's AutoModel class (`native_layout`: its state dict with
transformers' own conversion mapping reverted, built on the meta device), so a checkpoint in a layout
transformers does not read fails with the names that differ instead of loading with random weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from embzoo.conversion.load import weight_targets
from embzoo.conversion.snapshot import Snapshot, read_weights, weight_files
from embzoo.modeling.backbone import Backbone

log = logging.getLogger(__name__)


class NotNative(ValueError):
    """The checkpoint cannot be written in a layout that transformers' own classes load."""


@dataclass(frozen=True)
class NativeLayout:
    """What transformers' AutoModel class for a config.json saves, reads and runs."""

    model: nn.Module  # the class, built on the meta device
    saved: dict[str, tuple[int, ...]]  # tensor names and shapes save_pretrained writes (conversion mapping reverted)
    causal: bool | None  # its attention modules' direction (None: mixed, or no module says)

    @property
    def class_name(self) -> str:
        return type(self.model).__name__

    @property
    def named(self) -> dict[str, tuple[int, ...]]:
        """The class's own tensor names and shapes, which it also reads (the same as `saved` unless transformers'
        conversion mapping renames them on loading)."""
        return {n: tuple(t.shape) for n, t in self.model.state_dict().items()}

    def as_saved(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state` under the class's own names → as save_pretrained writes it."""
        return _as_saved(self.model, state)


def native_layout(config: dict[str, Any]) -> NativeLayout:
    """The layout of transformers' AutoModel for `config` (a config.json dict); NotNative when its model_type needs
    remote code."""
    from transformers import AutoConfig, AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise NotNative(
            f"model_type {model_type!r} has no transformers class (it runs only with trust_remote_code), so "
            "sentence-transformers, TEI and vLLM could not load it natively; use embzoo with this checkpoint as it is"
        )
    hf_config = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "auto_map"})
    with torch.device("meta"):
        model = AutoModel.from_config(hf_config, trust_remote_code=False)
    saved = {n: tuple(t.shape) for n, t in _as_saved(model, model.state_dict()).items()}
    directions = {m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)}
    return NativeLayout(model, saved, directions.pop() if len(directions) == 1 else None)


def _as_saved(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from transformers.core_model_loading import revert_weight_conversion

    return revert_weight_conversion(model, state)


def native_state(snapshot: Snapshot, backbone: Backbone) -> dict[str, torch.Tensor]:
    """`backbone`'s parameters under the names of `snapshot`'s checkpoint (the one it was loaded from; TF-era
    gamma/beta as weight/bias), in the backbone's dtype: the family's weight table run backwards. Fused parts are
    copies, other tensors the backbone's own."""
    state = backbone.state_dict()
    out: dict[str, torch.Tensor] = {}
    for target in weight_targets(snapshot, backbone):
        parts = target.source_tensors(state[target.name])
        out |= {k: t.clone() if len(parts) > 1 else t for k, t in parts.items()}
    return out


def native_weights(snapshot: Snapshot, backbone: Backbone, layout: NativeLayout) -> dict[str, torch.Tensor]:
    """The state transformers' `layout` class loads, in the backbone's dtype: native_state without the wrapper
    prefix of a *For* class's checkpoint ("bert.", "model."), plus the tensors of the layout that embzoo reads but
    does not run (BERT's pooler), copied from the checkpoint; those the checkpoint lacks too are left out, with a
    warning. NotNative lists the names the layout lacks or shapes differently."""
    state = native_state(snapshot, backbone)
    named = layout.named
    prefix = _wrapper_prefix(state, layout.saved | named)
    state = {name.removeprefix(prefix): t for name, t in state.items()}
    # the checkpoint in the class's own names (transformers' save_original_format=False) is written as saved
    want = named if len(set(state) & set(named)) > len(set(state) & set(layout.saved)) else layout.saved
    dtype = next(backbone.parameters()).dtype
    unread = {prefix + n: n for n in want if n not in state}
    for file in weight_files(snapshot.weights_dir or snapshot.model_dir):
        for name, tensor in read_weights(file, [n for n in file.shapes if n in unread]):
            state[unread[name]] = tensor.to(dtype=dtype, copy=True)
    shapes = {n: tuple(t.shape) for n, t in state.items()}
    report = [
        ("not in it", sorted(set(shapes) - set(want))),
        ("misshapen", [f"{n}: {shapes[n]} vs {s}" for n, s in want.items() if shapes.get(n, s) != s]),
    ]
    if any(items for _, items in report):
        lines = "\n".join(f"  {title}: {items}" for title, items in report if items)
        raise NotNative(
            f"{snapshot.root}: the checkpoint's tensors are not in transformers' {layout.class_name} layout:\n{lines}\n"
            "The checkpoint uses names transformers' own classes do not read (a remote-code layout); only "
            "checkpoints in transformers' layout can be exported"
        )
    if missing := sorted(set(want) - set(shapes)):  # the checkpoint lacks them too, and embzoo runs without them
        log.warning(
            "%s: %s has tensors the checkpoint lacks, which the token states do not use; transformers will "
            "initialize them when it loads the export: %s",
            snapshot.root,
            layout.class_name,
            missing,
        )
    return state if want is layout.saved else layout.as_saved(state)


def _wrapper_prefix(names: dict[str, Any], native: dict[str, Any]) -> str:
    """The one first name component every name shares when none is native ("model." of *ForCausalLM), else ""."""
    heads = {n.split(".", 1)[0] for n in names}
    return heads.pop() + "." if len(heads) == 1 and not set(names) & set(native) else ""
