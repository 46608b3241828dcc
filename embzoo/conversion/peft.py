r"""PEFT LoRA adapters merged into a base checkpoint's weights as they are read (LLM2Vec and other adapter repos).

An adapter folder holds adapter_config.json and adapter_model.safetensors (or a legacy adapter_model.bin);
its base_model_name_or_path names the model it was trained on, which may itself be an adapter folder. LLM2Vec
chains two: ...-mntp-supervised (adapter only) → ...-mntp (config.json, tokenizer and an adapter, no weights)
→ mistralai/Mistral-7B-Instruct-v0.2 (the weights); its from_pretrained merges the mntp adapter into the base
and then the supervised one (PeftModel.from_pretrained(...).merge_and_unload(), base first).

Merge, as peft's LoraLayer.get_delta_weight: W' = W + scaling · B @ A for each Linear an adapter targets, with
A [r, in], B [out, r], scaling = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora), r and lora_alpha per
module from rank_pattern / alpha_pattern (the first pattern P in the dict with module ≡ "(.*\.)?P$"), and
(B @ A)ᵀ for fan_in_fan_out checkpoints (weights stored [in, out], GPT-2's Conv1D). The sum is taken in
float32 and cast back to the stored dtype once. Everything else an adapter can carry (DoRA, modules_to_save,
trained biases, LoRA on embeddings or convolutions, other peft types) is rejected, not approximated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from embzoo.config import UnsupportedConfig
from embzoo.conversion.rules import Target, WeightMismatch
from embzoo.conversion.snapshot import (
    WEIGHT_FILES,
    Snapshot,
    SnapshotError,
    read_json,
    read_pipeline,
    read_snapshot,
    resolve,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# peft saves "base_model.model.<module>.lora_A.weight"; older files keep the adapter name ("lora_A.default")
LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.default)?\.weight$")
UNSUPPORTED = {  # adapter_config.json fields that, when set, make the update more than W += scaling · B @ A
    "use_dora": "DoRA rescales every weight column by a learned magnitude vector",
    "modules_to_save": "modules_to_save replaces whole modules with trained copies",
    "lora_bias": "lora_bias adds a trained bias to lora_B",
    "trainable_token_indices": "trainable tokens replace rows of the embedding matrix",
    "target_parameters": "LoRA on bare parameters (MoE experts) is not a Linear layer's LoRA",
    "layer_replication": "layer_replication repeats layers of the base model",
    "use_qalora": "QALoRA pools the input before lora_A",
    "alora_invocation_tokens": "activated LoRA acts only after its invocation tokens and cannot be merged",
    "use_bdlora": "BD-LoRA stores block-diagonal factors",
    "kasa_config": "KaSA truncates the base weight's singular values and adds a learned diagonal",
    "arrow_config": "Arrow routes between several adapters per token",
    "monteclora_config": "MonteCLoRA samples its factors",
}
MERGE_HINT = (
    "merge it with peft instead (PeftModel.from_pretrained(model, folder).merge_and_unload(), then "
    "save_pretrained) and load the merged folder"
)


def is_adapter(folder: Path) -> bool:
    """True for a PEFT adapter folder (it holds adapter_config.json)."""
    return (folder / ADAPTER_CONFIG).is_file()


@dataclass(frozen=True)
class LoraFactors:
    """One Linear layer's LoRA: a [r, in], b [out, r] as stored; fan_in_fan_out: the weight is stored [in, out]."""

    a: torch.Tensor
    b: torch.Tensor
    scaling: float
    fan_in_fan_out: bool

    def delta(self) -> torch.Tensor:
        """scaling · B @ A in float32, laid out like the base weight."""
        d = (self.b.float() @ self.a.float()) * self.scaling
        return d.T if self.fan_in_fan_out else d


@dataclass(frozen=True)
class Adapter:
    folder: Path
    modules: dict[str, LoraFactors]  # module path as peft named it ("layers.0.self_attn.q_proj") → its LoRA


def read_adapter(folder: Path) -> Adapter:
    """An adapter folder's LoRA factors and scalings; UnsupportedConfig for anything but LoRA on Linear layers."""
    cfg = read_json(folder / ADAPTER_CONFIG)
    check_config(cfg, folder)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    other = []
    for key, tensor in read_tensors(folder).items():
        if m := LORA_KEY.match(key):
            parts.setdefault(m["module"], {})[m["factor"]] = tensor
        else:
            other.append(key)
    if embedding := [k for k in other if ".lora_embedding_" in k]:
        raise UnsupportedConfig(
            f"{folder}: LoRA on embedding layers ({embedding}) is not supported: embzoo merges LoRA into Linear "
            f"weights only; {MERGE_HINT}"
        )
    if other:
        raise UnsupportedConfig(
            f"{folder}: tensors that are not LoRA factors of a Linear layer: {other}; embzoo merges only "
            f"'<module>.lora_A.weight' / '<module>.lora_B.weight' pairs; {MERGE_HINT}"
        )
    return Adapter(folder, {name: _factors(name, p, cfg, folder) for name, p in sorted(parts.items())})


def check_config(cfg: dict[str, Any], folder: Path) -> None:
    """Raise UnsupportedConfig unless adapter_config.json describes plain LoRA (W += scaling · B @ A)."""
    if cfg.get("peft_type") != "LORA":
        raise UnsupportedConfig(
            f"{folder}: peft_type {cfg.get('peft_type')!r} is not supported; only LoRA adapters (peft_type 'LORA') "
            "can be merged into the base weights"
        )
    if cfg.get("bias", "none") != "none":
        raise UnsupportedConfig(
            f"{folder}: bias={cfg['bias']!r} is not supported: the adapter trained biases of the base model, which "
            f"embzoo does not load from adapters (only bias='none'); {MERGE_HINT}"
        )
    for key, why in UNSUPPORTED.items():
        if cfg.get(key):
            raise UnsupportedConfig(f"{folder}: {key}={cfg[key]!r} is not supported: {why}; {MERGE_HINT}")


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The adapter folder's tensors as saved (safetensors, else a legacy .bin read with weights_only)."""
    for name in ADAPTER_WEIGHTS:
        path = folder / name
        if path.is_file():
            if path.suffix == ".safetensors":
                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    raise SnapshotError(f"no adapter weights in {folder}: looked for {list(ADAPTER_WEIGHTS)}")


def _pattern_value(patterns: dict[str, Any] | None, module: str, default: Any) -> Any:
    """peft's get_pattern_key: the first pattern P (dict order) such that the module path matches (.*\\.)?P$."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def module_scaling(cfg: dict[str, Any], module: str) -> tuple[int, float]:
    """(r, scaling) of `module` under adapter_config.json `cfg`: rank_pattern / alpha_pattern, rslora."""
    r = _pattern_value(cfg.get("rank_pattern"), module, cfg["r"])
    alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg["lora_alpha"])
    return r, alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _factors(module: str, parts: dict[str, torch.Tensor], cfg: dict[str, Any], folder: Path) -> LoraFactors:
    if set(parts) != {"A", "B"}:
        raise SnapshotError(f"{folder}: {module} has lora_{sorted(parts)} but needs both lora_A and lora_B")
    a, b = parts["A"], parts["B"]
    if a.ndim != 2 or b.ndim != 2:
        raise UnsupportedConfig(
            f"{folder}: {module} has {a.ndim}-D LoRA factors (a convolution); only Linear layers are merged"
        )
    r, scaling = module_scaling(cfg, module)
    if a.shape[0] != r or b.shape[1] != r:
        raise SnapshotError(
            f"{folder}: {module} has rank {r} in adapter_config.json but lora_A {tuple(a.shape)}, "
            f"lora_B {tuple(b.shape)}"
        )
    return LoraFactors(a, b, scaling, bool(cfg.get("fan_in_fan_out")))


def _has_weights(folder: Path) -> bool:
    return any((folder / f).is_file() for f in WEIGHT_FILES)


def adapter_chain(path: str | Path, revision: str | None = None) -> tuple[Path, list[Path]]:
    """(the folder with the base weights, the adapter folders to merge into them, base first).

    Follows base_model_name_or_path (a local folder or a Hub id, fetched with its adapter_config's revision)
    from adapter folders without weights down to a folder with weights; an adapter folder that has weights of
    its own is the base of its adapter.
    """
    folder = resolve(path, revision)
    chain: list[Path] = []
    while is_adapter(folder):
        if folder.resolve() in {f.resolve() for f in chain}:
            raise SnapshotError(f"adapter chain {[*map(str, chain), str(folder)]} loops back to {folder}")
        chain.append(folder)
        if _has_weights(folder):
            break
        cfg = read_json(folder / ADAPTER_CONFIG)
        if not cfg.get("base_model_name_or_path"):
            raise SnapshotError(
                f"{folder}/{ADAPTER_CONFIG} names no base_model_name_or_path: set it to the base model's folder "
                "or Hub id"
            )
        folder = resolve(cfg["base_model_name_or_path"], cfg.get("revision"))
    return folder, chain[::-1]


def adapter_snapshot(path: str | Path, revision: str | None = None) -> tuple[Snapshot, list[Path]]:
    """The snapshot of an adapter folder's chain and its adapter folders (base first): config.json, tokenizer
    and sentence-transformers files from the topmost folder that has them (LLM2Vec's -mntp repo), weights
    from the base."""
    base, chain = adapter_chain(path, revision)
    described = [f for f in [*reversed(chain), base] if (f / "config.json").is_file() or (f / "modules.json").is_file()]
    snap = read_snapshot(described[0] if described else base)
    return replace(snap, weights_dir=read_pipeline(base)[0]), chain


class LoraMerge:
    """load_backbone's transform(key, tensor): adds the LoRA update of every adapter that targets the checkpoint
    key (in the adapters' order) to the tensor; check() afterwards that every adapter module found its weight.

    An adapter module targets the base key "<module>.weight", up to a leading prefix on either name (the
    transformers base-model prefix: "model.layers.0.mlp.up_proj" and "layers.0.mlp.up_proj" match).
    """

    def __init__(self, adapters: Sequence[Adapter]):
        self.adapters = list(adapters)
        self._by_module: dict[str, list[tuple[int, str]]] = {}
        self._by_suffix: dict[str, list[tuple[int, str]]] = {}
        for i, adapter in enumerate(self.adapters):
            for module in adapter.modules:
                self._by_module.setdefault(module, []).append((i, module))
                for suffix in _suffixes(module)[1:]:
                    self._by_suffix.setdefault(suffix, []).append((i, module))
        self._targets: dict[tuple[int, str], set[str]] = {}

    def _lookup(self, key: str) -> list[tuple[int, str]]:
        """(adapter index, module) of every adapter module that targets checkpoint key `key`."""
        if not key.endswith(".weight"):
            return []
        stem = key.removesuffix(".weight")
        found = [hit for s in _suffixes(stem) for hit in self._by_module.get(s, ())]
        found += self._by_suffix.get(stem, [])
        adapters = [i for i, _ in found]
        if len(set(adapters)) != len(adapters):
            raise WeightMismatch(f"{key} is targeted by several modules of one adapter: {sorted(found)}")
        return sorted(found)

    def __call__(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        found = self._lookup(key)
        if not found:
            return tensor
        merged = tensor.to(torch.float32, copy=True)  # never write into the checkpoint's tensor
        for i, module in found:
            delta = self.adapters[i].modules[module].delta()
            if delta.shape != tensor.shape:
                raise WeightMismatch(
                    f"{self.adapters[i].folder}: the LoRA of {module} makes a {tuple(delta.shape)} update for "
                    f"{key}, which is {tuple(tensor.shape)}; the adapter belongs to another base model"
                )
            merged += delta
            self._targets.setdefault((i, module), set()).add(key)
        return merged.to(tensor.dtype)

    def place(self, targets: Sequence[Target]) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Each adapter's factors laid out on the model's parameters instead of merged: per adapter, parameter
        name → (a [R, in], b [out, R]) with b @ a == its update of that parameter (scalings folded into b, float32).

        A parameter fused from several checkpoint keys (q/k/v, gate/up) gets the targeted parts' A stacked on the
        rank dim and their B as blocks at the parts' rows (zero rows for parts the adapter does not target), then
        the target's row reordering: exact, no approximation. check() afterwards, as after merging.
        """
        placed: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = [{} for _ in self.adapters]
        for target in targets:
            for i in range(len(self.adapters)):
                parts = [(key, m) for key in target.sources for j, m in self._lookup(key) if j == i]
                if parts:
                    placed[i][target.name] = self._block(i, target, parts)
        return placed

    def _block(self, i: int, target: Target, parts: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        adapter = self.adapters[i]
        a_parts, blocks = [], []
        for key, module in parts:
            lora = adapter.modules[module]
            if lora.fan_in_fan_out:
                raise UnsupportedConfig(
                    f"{adapter.folder}: fan_in_fan_out adapters (weights stored [in, out]) can only be merged at "
                    "load: pass them in a list, adapters=[...]"
                )
            rows = target.part(torch.empty(target.shape, device="meta"), key).shape
            if (lora.b.shape[0], lora.a.shape[1]) != tuple(rows):
                raise WeightMismatch(
                    f"{adapter.folder}: the LoRA of {module} makes a {(lora.b.shape[0], lora.a.shape[1])} update "
                    f"for {key}, which is {tuple(rows)}; the adapter belongs to another base model"
                )
            a_parts.append(lora.a.float())
            blocks.append((key, lora.b.float() * lora.scaling))
            self._targets.setdefault((i, module), set()).add(key)
        a = torch.cat(a_parts)
        b = torch.zeros(target.shape[0], a.shape[0])
        col = 0
        for key, part in blocks:
            target.part(b, key)[:, col : col + part.shape[1]] = part
            col += part.shape[1]
        return a, target.finish(b)

    def check(self) -> None:
        """Raise WeightMismatch naming adapter modules that matched no loaded weight, or several."""
        problems = []
        for i, adapter in enumerate(self.adapters):
            unused = [m for m in adapter.modules if (i, m) not in self._targets]
            several = {m: sorted(keys) for (j, m), keys in self._targets.items() if j == i and len(keys) > 1}
            if unused:
                problems.append(f"{adapter.folder}: modules that target no weight of the base model: {unused}")
            if several:
                problems.append(f"{adapter.folder}: modules that match several weights: {several}")
        if problems:
            raise WeightMismatch(
                "LoRA adapters do not fit the base checkpoint:\n  "
                + "\n  ".join(problems)
                + "\nCheck the adapters' base_model_name_or_path; LoRA on weights an embedder does not load "
                "(e.g. lm_head) cannot be merged."
            )


def _suffixes(name: str) -> list[str]:
    """The name and every shorter dot-separated tail of it: "a.b.c" → ["a.b.c", "b.c", "c"]."""
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


def lora_transform(folders: Sequence[str | Path]) -> LoraMerge:
    """The merge transform of these adapter folders, applied in the given order (an empty list changes nothing)."""
    return LoraMerge([read_adapter(Path(f)) for f in folders])
