"""Text → token ids with the checkpoint's own fast tokenizer, truncated to the model's limit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, normalizers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInputs:
    """Token ids of N texts and what batching them needs besides; optional fields are None when unused."""

    ids: list[list[int]]
    truncated: int  # how many texts were cut to the model's limit
    skips: np.ndarray | None = None  # int [N]: leading tokens kept out of the sentence pool
    key_lengths: list[int] | None = None  # leading tokens each text attends to (ColBERT's unattended [MASK]s)
    keep: list[np.ndarray] | None = None  # bool [len_i] per text: tokens whose multivector output is returned

    def select(self, idx: np.ndarray) -> ModelInputs:
        """The inputs of texts idx (one batch)."""

        def pick(values: Sequence | None) -> list | None:
            return None if values is None else [values[i] for i in idx]

        skips = None if self.skips is None else self.skips[idx]
        return replace(self, ids=pick(self.ids), skips=skips, key_lengths=pick(self.key_lengths), keep=pick(self.keep))

    @classmethod
    def concat(cls, parts: Sequence[ModelInputs]) -> ModelInputs:
        """The inputs of several calls as one (texts in order); an optional field some parts lack is filled with
        what None means: no skip, every token a key, every token kept."""

        def joined(field: str, default: Any) -> list | None:
            if all(getattr(p, field) is None for p in parts):
                return None
            return [x for p in parts for x in (getattr(p, field) if getattr(p, field) is not None else default(p))]

        skips = joined("skips", lambda p: [0] * len(p.ids))
        return cls(
            ids=[s for p in parts for s in p.ids],
            truncated=sum(p.truncated for p in parts),
            skips=None if skips is None else np.asarray(skips),
            key_lengths=joined("key_lengths", lambda p: [len(s) for s in p.ids]),
            keep=joined("keep", lambda p: [np.ones(len(s), dtype=bool) for s in p.ids]),
        )


def fast_tokenizer(folder: Path) -> tuple[Any, Tokenizer]:
    """The folder's tokenizer as transformers loads it (tokenizer.json or vocab files), and a copy of its
    Rust backend. Never the checkpoint's remote code (config.json's auto_map), and never a prompt asking to."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    if not getattr(hf, "is_fast", False):
        raise ValueError(f"{folder}: no fast tokenizer could be built; add a tokenizer.json")
    return hf, plain_backend(hf)


def plain_backend(tokenizer: Any) -> Tokenizer:
    """A private copy of a transformers fast tokenizer's Rust backend, without truncation or padding."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def lowercase_first(backend: Tokenizer) -> None:
    """Lowercase texts ahead of the tokenizer's own normalizer unless it lowercases already, as sentence-transformers 6
    does for do_lower_case: special tokens written in a text ("[MASK]") stay special, unlike str.lower()."""
    normalizer = backend.normalizer
    steps = list(normalizer) if isinstance(normalizer, normalizers.Sequence) else [normalizer]
    if not any(isinstance(n, normalizers.Lowercase) for n in steps):
        backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), *(n for n in steps if n is not None)])


def warn_truncated(truncated: int, total: int, items: str, how: str) -> None:
    """The one warning per call that names how many of the `total` items were cut ("N of M {items} were {how}");
    logged, so never deduplicated. Every tokenizer and prompt builder reports truncation through it."""
    if truncated:
        log.warning("%d of %d %s were %s", truncated, total, items, how)


class TextTokenizer:
    """Batched tokenization (the Rust tokenizer's thread pool), special tokens added, truncation to
    max_length tokens from the tokenizer's truncation side; callers report truncation once per call with warn_truncated.

    end_id: every sequence ends with this token id (e5-mistral's and NV-Embed's EOS): appended after
    truncating to max_length - 1, unless the tokenizer's own template already ends sequences with it
    (Qwen3-Embedding's <|endoftext|>).
    """

    def __init__(
        self,
        backend: Tokenizer,
        max_length: int,
        special_ids: set[int],
        lowercase: bool = False,
        end_id: int | None = None,
        side: str = "right",
    ):
        self.backend = backend
        self.backend.no_padding()
        self.max_length = max_length
        self.special_ids = special_ids
        self.lowercase = lowercase
        if lowercase:
            lowercase_first(backend)
        if end_id is not None and backend.encode("a", add_special_tokens=True).ids[-1:] == [end_id]:
            end_id = None  # the template appends it already
        self.end_id = end_id
        self.backend.enable_truncation(max_length=max_length - (end_id is not None), direction=side)

    @classmethod
    def from_folder(cls, folder: Path, max_length: int, lowercase: bool = False, end_token: str = "") -> TextTokenizer:
        """Load the folder's tokenizer as transformers would (tokenizer.json or vocab files), truncating on its
        truncation_side; end_token: the token every input must end with ("" = none)."""
        hf, backend = fast_tokenizer(folder)
        end_id = backend.token_to_id(end_token) if end_token else None
        if end_token and end_id is None:
            raise ValueError(f"{folder}: inputs of this model end with {end_token!r}, which its tokenizer lacks")
        return cls(backend, max_length, set(hf.all_special_ids), lowercase, end_id, hf.truncation_side)

    def with_max_length(self, max_length: int) -> TextTokenizer:
        """A copy that truncates to max_length tokens instead (its own backend: this tokenizer is unchanged)."""
        backend = Tokenizer.from_str(self.backend.to_str())
        side = self.backend.truncation["direction"]
        return TextTokenizer(backend, max_length, self.special_ids, self.lowercase, self.end_id, side)

    def encode(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        """Token ids per text, and how many texts were truncated."""
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=True)
        ids = [e.ids for e in encodings]
        if self.end_id is not None:
            ids = [s + [self.end_id] for s in ids]
        return ids, sum(1 for e in encodings if e.overflowing)

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text has before truncation (special tokens and the end token included)."""
        lengths = []
        for e in self.backend.encode_batch(list(texts), add_special_tokens=True):
            cut = sum(len(o.ids) - sum(o.special_tokens_mask) for o in e.overflowing)  # the pieces beyond the limit
            lengths.append(len(e.ids) + cut + (self.end_id is not None))
        return lengths

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text on its own, without special tokens (truncated like encode)."""
        return [len(e.ids) for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def warn_truncated(self, truncated: int, total: int) -> None:
        """The one warning per call that names how many inputs were cut."""
        warn_truncated(
            truncated, total, "inputs", f"longer than {self.max_length} tokens and were truncated to that limit"
        )

    def prompt_length(self, prompt: str) -> int:
        """Tokens a prompt contributes at the start of a text (its trailing special token excluded)."""
        ids = self.encode([prompt])[0][0]
        return len(ids) - 1 if ids and ids[-1] in self.special_ids else len(ids)
