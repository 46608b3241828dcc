"""A generative reranker's LM head reduced to one score row: W[positive] − W[negative] (or W[positive]) in fp32.

The score the references read, logit(positive) − logit(negative) at the last position, is h · (W[pos] − W[neg])
for an LM head without bias or logit softcapping (h: the final-normed last-token state), so the V-wide head
is never needed: only its two rows are read from the checkpoint (a safetensors slice; a legacy .bin file is
memory-mapped). The head is lm_head.weight, or the token embedding when the config ties them
(`tie_word_embeddings`, whose default differs by model type as in transformers' config classes).
"""

from __future__ import annotations

import re

import torch
from safetensors import safe_open

from embzoo.config import UnsupportedConfig
from embzoo.conversion.snapshot import Snapshot, SnapshotError, WeightFile, read_weights, weight_files

LM_HEAD = re.compile(r"^lm_head\.weight$")
EMBED_TOKENS = re.compile(r"^(?:model\.)?embed_tokens\.weight$")
CONVERTED_ROW = "row"  # ScoreRowScorer's buffer, as an embzoo folder stores it
# transformers' tie_word_embeddings default per config class, for the model types a yes/no reranker runs on
TIED_BY_DEFAULT = {"llama": False, "mistral": False, "qwen2": False, "qwen3": False, "gemma": True}


def score_row(snapshot: Snapshot, positive: int, negative: int | None) -> torch.Tensor:
    """fp32 [D]: the LM head's row `positive` minus its row `negative` (None: the row itself), on CPU; an embzoo
    folder stores the row itself (CONVERTED_ROW)."""
    if snapshot.converted is not None:
        files = [f for f in weight_files(snapshot.model_dir) if CONVERTED_ROW in f.shapes]
        if not files:
            raise SnapshotError(f"{snapshot.model_dir}: this embzoo folder has no {CONVERTED_ROW!r} tensor")
        # a copy: the file's mapping may leave the tensor unaligned, and a misaligned row rounds dot products otherwise
        return dict(read_weights(files[0], [CONVERTED_ROW]))[CONVERTED_ROW].float().clone()
    config = snapshot.config
    kind = config["model_type"]
    if kind not in TIED_BY_DEFAULT:
        raise UnsupportedConfig(
            f"model_type {kind!r} is not a yes/no reranker backbone; supported: {sorted(TIED_BY_DEFAULT)}"
        )
    if config.get("final_logit_softcapping"):
        raise UnsupportedConfig(
            f"{kind}: final_logit_softcapping makes the logit difference non-linear; one score row cannot express it"
        )
    tied = config.get("tie_word_embeddings", TIED_BY_DEFAULT[kind])
    pattern = EMBED_TOKENS if tied else LM_HEAD
    folder = snapshot.weights_dir or snapshot.model_dir
    found = [(f, name) for f in weight_files(folder) for name in f.shapes if pattern.match(name)]
    if len(found) != 1:
        head = "the token embedding (tie_word_embeddings)" if tied else "lm_head.weight (tie_word_embeddings false)"
        raise SnapshotError(f"{folder}: expected one tensor for {head}, found {[n for _, n in found]}")
    file, name = found[0]
    ids = [positive] if negative is None else [positive, negative]
    vocab = file.shapes[name][0]
    if max(ids) >= vocab:
        raise SnapshotError(
            f"{folder}: score token ids {ids} lie outside {name}'s {vocab} rows; the tokenizer "
            "does not belong to this checkpoint"
        )
    rows = read_rows(file, name, ids).float()
    return rows[0] if negative is None else rows[0] - rows[1]


def read_rows(file: WeightFile, name: str, rows: list[int]) -> torch.Tensor:
    """Rows [len(rows), D] of the 2-D tensor `name`, in the stored dtype, reading only those rows."""
    if file.path.suffix == ".safetensors":
        with safe_open(str(file.path), framework="pt") as handle:
            matrix = handle.get_slice(file.stored[name])
            return torch.cat([matrix[i : i + 1] for i in rows])
    [(_, matrix)] = list(read_weights(file, [name]))  # legacy .bin, memory-mapped: only these rows are read
    return matrix[rows].clone()
