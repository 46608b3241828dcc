"""Read a Hub snapshot folder: config, weights (safetensors, sharded, or legacy .bin), and the
sentence-transformers pipeline description (modules.json, Pooling, Dense, Normalize, prompts)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

log = logging.getLogger(__name__)

ST_TRANSFORMER, ST_POOLING, ST_DENSE, ST_NORMALIZE = "Transformer", "Pooling", "Dense", "Normalize"
ST_MLM_TRANSFORMER, ST_SPLADE = "MLMTransformer", "SpladePooling"  # sentence-transformers' SparseEncoder (SPLADE)
ST_MODULES = (ST_TRANSFORMER, ST_POOLING, ST_DENSE, ST_NORMALIZE, ST_MLM_TRANSFORMER, ST_SPLADE)
# module order embzoo runs, by kind letter: Transformer → Pooling → Dense… → Normalize (a ColBERT model: Dense
# layers with no Pooling, per token), or Transformer → SpladePooling
MODULE_LETTERS = {
    ST_TRANSFORMER: "T",
    ST_MLM_TRANSFORMER: "T",
    ST_POOLING: "P",
    ST_DENSE: "D",
    ST_NORMALIZE: "N",
    ST_SPLADE: "S",
}
MODULE_ORDER = re.compile(r"T(?:P?D*N?|S)")
# PyLate's ColBERT settings in config_sentence_transformers.json (see embzoo.conversion.output_heads)
COLBERT_KEYS = (
    "query_prefix",
    "document_prefix",
    "query_length",
    "document_length",
    "attend_to_expansion_tokens",
    "skiplist_words",
    "do_query_expansion",
)
LEGACY_POOLING_KEYS = {  # sentence-transformers' concatenation order
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Dense config keys and the values embzoo runs (the first is the default): after a Pooling module a Dense layer
# maps the sentence embedding; without one (ColBERT) it maps every token, whatever names its config gives
DENSE_SUPPORTED = {"use_residual": (False,)}
DENSE_POOLED = {"module_input_name": ("sentence_embedding",), "module_output_name": ("sentence_embedding",)}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# what a Hub download fetches (fnmatch: "*" crosses "/", so module subfolders are included);
# ONNX/OpenVINO exports and duplicate .bin weights are left on the Hub
HUB_FILES = [
    "*.json",
    "*.txt",
    "*.model",
    "*.safetensors",
    "colbert_linear.pt",
    "sparse_linear.pt",
    "artifact.metadata",
]
HUB_LEGACY_WEIGHTS = ["*.json", "*pytorch_model*.bin", "adapter_model.bin"]
HUB_IGNORE = ["consolidated*"]  # Mistral's original-format copy of the weights, beside the transformers shards


LEGACY_NORM_NAME = re.compile(r"(?<=LayerNorm\.)(gamma|beta)$")
LEGACY_NORM_PARAMS = {"gamma": "weight", "beta": "bias"}
# safetensors' dtype codes → torch's names (codes not listed are shown as they are)
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64"}
SAFETENSORS_DTYPES |= {"I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class SnapshotError(FileNotFoundError):
    """A model folder lacks something it needs, or its files are malformed."""


@dataclass(frozen=True)
class DenseSpec:
    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str | None  # class path as sentence-transformers writes it; None = identity


@dataclass(frozen=True)
class PipelineSpec:
    """The sentence-transformers modules after the transformer; None fields mean "not specified"."""

    pooling: tuple[str, ...] | None = None
    include_prompt: bool = True
    dense: tuple[DenseSpec, ...] = ()
    normalize: bool | None = None
    max_seq_length: int | None = None  # sentence_bert_config.json
    tokenizer_max_length: int | None = None  # tokenizer_config.json model_max_length
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    colbert: dict[str, Any] = field(default_factory=dict)  # PyLate's settings (COLBERT_KEYS) that the folder states
    max_active_dims: int | None = None  # a SparseEncoder's saved top-k
    similarity_fn_name: str | None = None  # how sentence-transformers compares the vectors ("cosine", "dot", …)
    truncate_dim: int | None = None  # the dimensions sentence-transformers truncates the vectors to by default
    splade: dict[str, Any] | None = None  # a SpladePooling module's config.json


@dataclass(frozen=True)
class Snapshot:
    root: Path  # the folder given
    model_dir: Path  # holds config.json, weights and tokenizer (sentence-transformers module 0)
    config: dict[str, Any]
    pipeline: PipelineSpec
    weights_dir: Path | None = None  # where the weights are when not in model_dir (a LoRA adapter's base model)
    # an embzoo folder's config.json "embzoo" section (see embzoo.conversion.convert): the backbone (and
    # classification head) are stored under their embzoo names; `config` is then the source's config.json
    converted: dict[str, Any] | None = None

    @property
    def stated_dtype(self) -> str:
        """config.json's dtype (transformers 5) or torch_dtype when it is one embzoo runs, else "float32"."""
        stated = self.config.get("dtype") or self.config.get("torch_dtype")
        return stated if stated in ("float32", "float16", "bfloat16") else "float32"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SnapshotError(f"missing {path.name} in {path.parent}") from None
    except json.JSONDecodeError as e:
        raise SnapshotError(f"{path} is not valid JSON: {e}") from None


def resolve(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub id fetched (or found in the cache) by huggingface_hub."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise SnapshotError(f"{name_or_path!r} is not a model folder (a directory with config.json)")
    from huggingface_hub import snapshot_download

    try:  # configs, tokenizers and safetensors; legacy .bin weights only for folders without safetensors
        folder = Path(
            snapshot_download(
                str(name_or_path), revision=revision, allow_patterns=HUB_FILES, ignore_patterns=HUB_IGNORE
            )
        )
        if _weightless_folders(folder):
            folder = Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=HUB_LEGACY_WEIGHTS))
        return folder
    except Exception as e:  # offline, unknown repo, gated repo: one message with the ways out
        raise SnapshotError(
            f"could not fetch {name_or_path!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            "Check the id and your network (HF_HUB_OFFLINE=1 only reads the local cache), or pass the "
            "path of a local snapshot folder."
        ) from None


def _weightless_folders(root: Path) -> list[Path]:
    """The transformer and Dense folders of a snapshot that hold no safetensors weights."""
    model_dir, pipeline = read_pipeline(root)
    folders = [model_dir, *(d.path for d in pipeline.dense)]
    return [f for f in folders if not any(f.glob("*.safetensors"))]


def _pooling_modes(cfg: dict[str, Any]) -> tuple[str, ...]:
    mode = cfg.get("pooling_mode")
    if mode is not None:
        return (mode,) if isinstance(mode, str) else tuple(mode)
    return tuple(m for key, m in LEGACY_POOLING_KEYS.items() if cfg.get(key))


def _module_kind(type_name: str) -> str:
    short = type_name.rsplit(".", 1)[-1]
    if short not in ST_MODULES:
        raise SnapshotError(
            f"modules.json names a module {type_name!r} that embzoo does not run; supported: {ST_MODULES}"
        )
    return short


def _dense_spec(folder: Path, pooled: bool) -> DenseSpec:
    """A Dense module's folder; pooled: it follows a Pooling module (else it maps every token, as ColBERT's)."""
    cfg = read_json(folder / "config.json")
    for key, values in (DENSE_SUPPORTED | DENSE_POOLED if pooled else DENSE_SUPPORTED).items():
        if cfg.get(key, values[0]) not in values:
            raise SnapshotError(
                f"{folder}: Dense {key}={cfg[key]!r} is not supported (only {' or '.join(map(repr, values))}); "
                "embzoo applies Dense layers to the pooled sentence embedding, or to every token (ColBERT)"
            )
    activation = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    return DenseSpec(folder, int(cfg["in_features"]), int(cfg["out_features"]), bool(cfg.get("bias", True)), activation)


def _tokenizer_max_length(model_dir: Path) -> int | None:
    """tokenizer_config.json's model_max_length, where sentence-transformers >= 6 saves max_seq_length
    (absent or a huge placeholder means unset)."""
    path = model_dir / "tokenizer_config.json"
    value = read_json(path).get("model_max_length") if path.is_file() else None
    return int(value) if isinstance(value, (int, float)) and value < 1_000_000 else None


def read_pipeline(root: Path) -> tuple[Path, PipelineSpec]:
    """The transformer's folder and the modules around it, from modules.json if there is one."""
    spec: dict[str, Any] = {}
    st_cfg = root / "config_sentence_transformers.json"
    if st_cfg.is_file():
        cfg = read_json(st_cfg)
        spec["prompts"] = dict(cfg.get("prompts") or {})
        spec["default_prompt_name"] = cfg.get("default_prompt_name")
        spec["colbert"] = {k: cfg[k] for k in COLBERT_KEYS if k in cfg}
        spec["max_active_dims"] = cfg.get("max_active_dims")
        spec["similarity_fn_name"] = cfg.get("similarity_fn_name")
        spec["truncate_dim"] = cfg.get("truncate_dim")
    if not (root / "modules.json").is_file():
        return root, PipelineSpec(**spec, tokenizer_max_length=_tokenizer_max_length(root))
    modules = read_json(root / "modules.json")
    kinds = [_module_kind(m["type"]) for m in modules]
    if not MODULE_ORDER.fullmatch("".join(MODULE_LETTERS[k] for k in kinds)):
        raise SnapshotError(
            f"{root}/modules.json runs {kinds}; embzoo runs Transformer → Pooling → Dense… → Normalize "
            "(each optional after the Transformer, in that order; ColBERT: Dense layers without Pooling), or "
            "Transformer → SpladePooling"
        )
    model_dir, dense = root, []
    for kind, module in zip(kinds, modules, strict=True):
        sub = root / module.get("path", "")
        if MODULE_LETTERS[kind] == "T":
            model_dir = sub
            for name in ("sentence_bert_config.json", "sentence_transformers_config.json"):
                if (sub / name).is_file():
                    cfg = read_json(sub / name)
                    spec["max_seq_length"] = cfg.get("max_seq_length")
                    spec["do_lower_case"] = bool(cfg.get("do_lower_case", False))
                    break
        elif kind == ST_POOLING:
            cfg = read_json(sub / "config.json")
            spec["pooling"] = _pooling_modes(cfg)
            spec["include_prompt"] = bool(cfg.get("include_prompt", True))
        elif kind == ST_DENSE:
            dense.append(_dense_spec(sub, pooled="pooling" in spec))
        elif kind == ST_SPLADE:
            spec["splade"] = read_json(sub / "config.json") if (sub / "config.json").is_file() else {}
    spec["normalize"] = kinds[-1] == ST_NORMALIZE
    return model_dir, PipelineSpec(**spec, dense=tuple(dense), tokenizer_max_length=_tokenizer_max_length(model_dir))


CONVERTED_TYPE = "embzoo"  # config.json model_type of a folder `embzoo convert` wrote
CONVERTED_FORMAT = 1  # the layout version of such a folder, in its "embzoo" section


def read_snapshot(path: str | Path) -> Snapshot:
    root = Path(path)
    model_dir, pipeline = read_pipeline(root)
    config = read_json(model_dir / "config.json")
    if config.get("model_type") != CONVERTED_TYPE:
        return Snapshot(root, model_dir, config, pipeline)
    section = config.get(CONVERTED_TYPE)
    if not isinstance(section, dict) or not isinstance(section.get("config"), dict) or "arch" not in section:
        raise SnapshotError(f"{model_dir}/config.json says model_type 'embzoo' but has no valid 'embzoo' section")
    if section.get("format") != CONVERTED_FORMAT:
        raise SnapshotError(
            f"{model_dir}: an embzoo folder of format {section.get('format')!r}; this embzoo reads format "
            f"{CONVERTED_FORMAT}: convert the source ({section.get('source')}) again with `embzoo convert`"
        )
    return Snapshot(root, model_dir, section["config"], pipeline, converted=section)


def _shards(folder: Path, index_name: str) -> list[Path]:
    index = read_json(folder / index_name)
    return [folder / f for f in sorted(set(index["weight_map"].values()))]


@dataclass(frozen=True)
class WeightFile:
    """One weights file (a shard or the whole checkpoint): its tensors' shapes, read from the header."""

    path: Path
    shapes: dict[str, tuple[int, ...]]  # by tensor name (TF-era gamma/beta renamed weight/bias)
    stored: dict[str, str]  # tensor name → the key in the file
    dtypes: dict[str, str]  # by tensor name: the stored dtype as torch names it ("float32", "bfloat16", ...)


def weight_files(folder: Path) -> list[WeightFile]:
    """The folder's weights files (shards in index order) with every tensor's name and shape; no data read."""
    present = [f for f in WEIGHT_FILES if (folder / f).is_file()]
    if not present:
        raise SnapshotError(f"no weights in {folder}: looked for {list(WEIGHT_FILES)}")
    first = present[0]
    files = _shards(folder, first) if first.endswith(".index.json") else [folder / first]
    return [_header(file) for file in files]


def _header(file: Path) -> WeightFile:
    if file.suffix == ".safetensors":
        with safe_open(str(file), framework="pt") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}  # noqa: SIM118
            shapes = {key: tuple(s.get_shape()) for key, s in slices.items()}
            dtypes = {key: SAFETENSORS_DTYPES.get(s.get_dtype(), s.get_dtype()) for key, s in slices.items()}
    else:  # a meta map_location builds the tensors without their data
        state = torch.load(file, map_location="meta", weights_only=True)
        shapes = {key: tuple(t.shape) for key, t in state.items()}
        dtypes = {key: str(t.dtype).removeprefix("torch.") for key, t in state.items()}
    # TF-era checkpoints name LayerNorm parameters gamma/beta; transformers renames them on load too
    stored = {LEGACY_NORM_NAME.sub(lambda m: LEGACY_NORM_PARAMS[m.group(1)], key): key for key in shapes}
    by_name = {name: (shapes[key], dtypes[key]) for name, key in stored.items()}
    return WeightFile(file, {n: s for n, (s, _) in by_name.items()}, stored, {n: d for n, (_, d) in by_name.items()})


def read_weights(file: WeightFile, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each of `names`, on CPU in the stored dtype. The tensors may share memory with
    the file's mapping, which is released when the iterator is exhausted and they are dropped."""
    if file.path.suffix == ".safetensors":
        with safe_open(str(file.path), framework="pt") as handle:
            for name in names:
                yield name, handle.get_tensor(file.stored[name])
        return
    # legacy .bin: weights_only never unpickles code; mmap needs the zip format (torch >= 1.6)
    try:
        state = torch.load(file.path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        state = torch.load(file.path, map_location="cpu", weights_only=True)
    for name in names:
        yield name, state.pop(file.stored[name])
