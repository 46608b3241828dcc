"""Multi-vector and sparse heads, and ColBERT's input roles, from a snapshot.

Layouts:
- ColBERT, PyLate: a sentence-transformers folder Transformer → Dense… (no Pooling; the Dense layers project every
  token), settings in config_sentence_transformers.json (COLBERT_KEYS; PyLate's defaults where absent).
- ColBERT, Stanford (config.json architectures ["HF_ColBERT"]): bert.* plus linear.weight [dim, hidden] (no bias)
  in the checkpoint, settings in artifact.metadata (ColBERTConfig's defaults where absent: markers [unused0] /
  [unused1], documents of 220 tokens, punctuation masked unless mask_punctuation is false; cosine similarity only).
- BGE-M3: colbert_linear.pt {weight [D, D], bias} and sparse_linear.pt {weight [1, D], bias} beside the XLM-R
  weights (torch state dicts, read with weights_only=True). Its ColBERT vectors leave out CLS; its sparse weights
  leave out the tokenizer's special tokens (CLS, EOS, PAD, UNK).
- SPLADE: a masked-LM checkpoint whose family names its MLM head (MLM_WEIGHTS, MLM_TIED / MLM_UNTIED,
  `mlm_head(hf)`); a sentence-transformers SpladePooling module (or a catalog recipe) says so.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embzoo.conversion.load import load_dense
from embzoo.conversion.rules import Drop, Rule
from embzoo.conversion.snapshot import Snapshot, SnapshotError, read_json, weight_files
from embzoo.conversion.stream import load_state
from embzoo.late_interaction import LateInteraction, Role
from embzoo.modeling.heads import ClassificationHead, Dense
from embzoo.modeling.multivector import MultiVectorHead
from embzoo.modeling.sparse import SpladeSparse, TokenWeightSparse
from embzoo.registry import family_for, family_modules
from embzoo.tokenization import TextTokenizer, fast_tokenizer, plain_backend

PYLATE_DEFAULTS: dict[str, Any] = {
    "query_prefix": "[Q] ",
    "document_prefix": "[D] ",
    "query_length": 32,
    "document_length": 180,
    "attend_to_expansion_tokens": False,
    "skiplist_words": list(string.punctuation),
    "do_query_expansion": True,
}
# artifact.metadata key → PyLate setting; Stanford's markers are [unused0] / [unused1] when it names none
STANFORD_KEYS = {
    "query_token_id": "query_prefix",
    "doc_token_id": "document_prefix",
    "query_maxlen": "query_length",
    "doc_maxlen": "document_length",
    "attend_to_mask_tokens": "attend_to_expansion_tokens",
}
STANFORD_DEFAULTS = {"query_prefix": "[unused0]", "document_prefix": "[unused1]", "document_length": 220}
STANFORD_LINEAR = r"^linear\.weight$"
STANFORD_RULES = [Rule(STANFORD_LINEAR, "linear.weight"), Drop(r"^(?!linear\.weight$)")]  # the projection alone
BGE_M3_FILES = ("colbert_linear.pt", "sparse_linear.pt")
BGE_M3_UNUSED = ("cls", "eos", "pad", "unk")  # special tokens FlagEmbedding leaves out of the sparse weights
CONVERTED_EMBEDDINGS = Rule(r"^backbone\.embed\.tok\.weight$", "out.weight")  # a tied decoder in an embzoo folder
SPLADE_POOLING = {"pooling_strategy": ("max", "sum"), "activation_function": ("relu", "log1p_relu")}


def is_stanford_colbert(snapshot: Snapshot) -> bool:
    return (snapshot.config.get("architectures") or [None])[0] == "HF_ColBERT"


def is_colbert(snapshot: Snapshot) -> bool:
    """A PyLate folder (Dense modules without Pooling, or ColBERT settings in config_sentence_transformers.json;
    PyLate's defaults fill what it leaves out) or a Stanford checkpoint."""
    pipe = snapshot.pipeline
    return bool(pipe.colbert) or (pipe.pooling is None and bool(pipe.dense)) or is_stanford_colbert(snapshot)


def is_bge_m3(snapshot: Snapshot) -> bool:
    return any((snapshot.model_dir / f).is_file() for f in BGE_M3_FILES)


def colbert_settings(snapshot: Snapshot) -> dict[str, Any]:
    """The folder's ColBERT settings over PyLate's defaults (Stanford: artifact.metadata, its own markers)."""
    settings = dict(PYLATE_DEFAULTS)
    if is_stanford_colbert(snapshot):
        settings |= STANFORD_DEFAULTS
        metadata = snapshot.model_dir / "artifact.metadata"
        stated = read_json(metadata) if metadata.is_file() else {}
        settings |= {ours: stated[key] for key, ours in STANFORD_KEYS.items() if stated.get(key) is not None}
        if stated.get("mask_punctuation") is False:
            settings["skiplist_words"] = []
        if stated.get("similarity", "cosine") != "cosine":
            raise SnapshotError(
                f"{metadata}: similarity {stated['similarity']!r}; embzoo scores ColBERT vectors by cosine MaxSim only"
            )
    return settings | snapshot.pipeline.colbert


def _token_id(tokenizer: Any, token: str, what: str, folder: Path) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise SnapshotError(
            f"{folder}: the ColBERT {what} {token!r} is not a token of this tokenizer. PyLate adds it to the tokenizer "
            "(tokenizer.json added_tokens) when it saves a model: add it with tokenizer.add_tokens and resize the "
            "embeddings, or set the prefix in config_sentence_transformers.json to a token it has (e.g. [unused0])"
        )
    return token_id


def _expansion_id(tokenizer: Any, folder: Path) -> int:
    """The id queries are padded with: the mask token, else EOS, else PAD (PyLate's choice)."""
    for candidate in (tokenizer.mask_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        if candidate is not None:
            return candidate
    raise SnapshotError(
        f"{folder}: ColBERT query expansion pads with the mask (or EOS, or PAD) token; this tokenizer has none: "
        'set "do_query_expansion": false in config_sentence_transformers.json'
    )


def late_interaction(
    snapshot: Snapshot, *, lowercase: bool = False, document_length: int | None = None
) -> LateInteraction:
    """The query and document roles of a ColBERT snapshot; document_length overrides the stated one."""
    s = colbert_settings(snapshot)
    folder = snapshot.model_dir
    hf, _ = fast_tokenizer(folder)
    expansion = _expansion_id(hf, folder) if s["do_query_expansion"] else -1
    # PyLate looks each skiplist word up as a token: a word outside the vocabulary skips the unknown token
    skiplist = frozenset(hf.convert_tokens_to_ids(w) for w in s["skiplist_words"]) - {None}
    lengths = {"query": int(s["query_length"]), "document": int(document_length or s["document_length"])}
    roles, tokenizers = {}, {}
    for role, prefix in (("query", s["query_prefix"]), ("document", s["document_prefix"])):
        marker = _token_id(hf, prefix, f"{role} marker", folder) if prefix else None
        expand = role == "query" and bool(s["do_query_expansion"])
        roles[role] = Role(
            length=lengths[role],
            marker_id=marker,
            expand=expand,
            attend_expansion=expand and bool(s["attend_to_expansion_tokens"]),
            skiplist=skiplist if role == "document" else frozenset(),
        )
        limit = lengths[role] - (marker is not None)
        tokenizers[role] = TextTokenizer(
            plain_backend(hf), limit, set(hf.all_special_ids), lowercase, side=hf.truncation_side
        )
    return LateInteraction(tokenizers, roles, expansion)


def colbert_head(snapshot: Snapshot, hidden_size: int, *, device: torch.device | str = "cpu") -> MultiVectorHead:
    """A ColBERT snapshot's projection, fp32 on device: PyLate's Dense folders, or Stanford's linear.weight."""
    if not is_stanford_colbert(snapshot):
        if not snapshot.pipeline.dense:
            raise SnapshotError(
                f"{snapshot.root}: a PyLate ColBERT folder projects tokens with Dense modules; none found"
            )
        return MultiVectorHead([load_dense(d, device=device) for d in snapshot.pipeline.dense])
    folder = snapshot.weights_dir or snapshot.model_dir
    shapes = {n: s for f in weight_files(folder) for n, s in f.shapes.items()}
    if "linear.weight" not in shapes or shapes["linear.weight"][1] != hidden_size:
        raise SnapshotError(f"{folder}: a Stanford ColBERT checkpoint needs linear.weight [dim, {hidden_size}]")
    with torch.device("meta"):
        dense = Dense(hidden_size, shapes["linear.weight"][0], bias=False, activation=nn.Identity())
    state = load_state(folder, STANFORD_RULES, {"linear.weight": tuple(dense.linear.weight.shape)}, device=device)
    dense.load_state_dict(state, strict=True, assign=True)
    return MultiVectorHead([dense])


def _read_pt(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A legacy torch state dict (weights only, never code), checked against the expected names and shapes."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    got = {n: tuple(t.shape) for n, t in state.items()}
    if got != expected:
        raise SnapshotError(f"{path}: expected tensors {expected}, found {got}")
    return {n: t.float() for n, t in state.items()}


def bge_m3_heads(
    snapshot: Snapshot, hidden_size: int, vocab_size: int, *, device: torch.device | str = "cpu"
) -> tuple[TokenWeightSparse | None, MultiVectorHead | None]:
    """BGE-M3's sparse and ColBERT heads (each None when its file is absent), fp32 on device. The sparse head
    leaves out the tokenizer's CLS, EOS, PAD and UNK ids, as FlagEmbedding does (not its other special tokens)."""
    sparse = multivector = None
    folder = snapshot.model_dir
    if (folder / "sparse_linear.pt").is_file():
        hf, _ = fast_tokenizer(folder)
        unused = {
            hf.convert_tokens_to_ids(getattr(hf, f"{t}_token")) for t in BGE_M3_UNUSED if getattr(hf, f"{t}_token")
        }
        sparse = TokenWeightSparse(hidden_size, vocab_size, unused - {None})
        sparse.linear.load_state_dict(_read_pt(folder / "sparse_linear.pt", {"weight": (1, hidden_size), "bias": (1,)}))
    if (folder / "colbert_linear.pt").is_file():
        dim = torch.load(folder / "colbert_linear.pt", map_location="meta", weights_only=True)["weight"].shape[0]
        dense = Dense(hidden_size, dim, bias=True, activation=nn.Identity())
        expected = {"weight": (dim, hidden_size), "bias": (dim,)}
        dense.linear.load_state_dict(_read_pt(folder / "colbert_linear.pt", expected))
        multivector = MultiVectorHead([dense], skip_first=True, reduce="mean")
    return (
        None if sparse is None else sparse.to(device),
        None if multivector is None else multivector.to(device),
    )


def splade_head(
    snapshot: Snapshot, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> SpladeSparse:
    """The masked-LM head as a SPLADE head in dtype on device; with tie_word_embeddings (the default), its decoder is
    the word embeddings and its bias the head's own, as transformers ties them."""
    family = family_for(snapshot.config)
    if not hasattr(family, "MLM_WEIGHTS"):
        raise SnapshotError(
            f"{snapshot.root}: SPLADE needs a masked-LM head; embzoo reads it for {_mlm_families()}, not for "
            f"model_type {snapshot.config.get('model_type')!r}"
        )
    pooling = snapshot.pipeline.splade or {}
    for key, allowed in SPLADE_POOLING.items():
        if pooling.get(key, allowed[0]) not in allowed:
            raise SnapshotError(f"{snapshot.root}: SpladePooling {key}={pooling[key]!r}; supported: {allowed}")
    with torch.device("meta"):
        mlm = ClassificationHead(**family.mlm_head(snapshot.config))
    expected = {n: tuple(t.shape) for n, t in mlm.state_dict().items()}
    folder = snapshot.weights_dir or snapshot.model_dir
    tied = family.MLM_TIED
    if snapshot.converted is not None:  # an embzoo folder keeps the word embeddings under the backbone's name
        tied = [CONVERTED_EMBEDDINGS, *(r for r in tied if r.target != CONVERTED_EMBEDDINGS.target)]
    rules = [*family.MLM_WEIGHTS, *(tied if snapshot.config.get("tie_word_embeddings", True) else family.MLM_UNTIED)]
    backbone_keys = Drop("^(?!" + "|".join(re.sub(r"\(\?P<\w+>", "(?:", r.pattern[1:]) for r in rules) + ")")
    state = load_state(folder, [*rules, backbone_keys], expected, dtype=dtype, device=device)
    mlm.load_state_dict(state, strict=True, assign=True)
    return SpladeSparse(
        mlm, pooling=pooling.get("pooling_strategy", "max"), activation=pooling.get("activation_function", "relu")
    )


def _mlm_families() -> list[str]:
    return sorted(t for m in family_modules() if hasattr(m, "MLM_WEIGHTS") for t in m.MODEL_TYPES)
