"""ColBERT inputs: queries and documents tokenized apart, as PyLate (and Stanford ColBERT) do.

Each role ("query", "document") strips the text, truncates it to its length minus one, then inserts its marker
token after the first token ([CLS] [Q] text [SEP]). Queries with expansion are then padded with [MASK] to the
query length; unless the model attends to them, the [MASK] tokens are no keys (every token still gets a vector).
A document's vectors leave out the tokens of the skiplist (punctuation); a query keeps all of its vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embzoo.tokenization import ModelInputs, TextTokenizer


@dataclass(frozen=True)
class Role:
    """How one kind of input (query or document) is tokenized."""

    length: int  # tokens at most, marker included
    marker_id: int | None  # inserted after the first token; None = no marker
    expand: bool = False  # pad with the mask token up to `length` (query expansion)
    attend_expansion: bool = False  # the padding [MASK] tokens are keys too
    skiplist: frozenset[int] = frozenset()  # token ids whose vectors are left out


class LateInteraction:
    """Role-aware tokenization of a ColBERT model: encode(texts, role) → ModelInputs with key lengths (unattended
    expansion) and the tokens whose vectors are kept."""

    def __init__(self, tokenizers: dict[str, TextTokenizer], roles: dict[str, Role], expansion_id: int):
        self.tokenizers = tokenizers  # per role, truncating to the role's length minus the marker
        self.roles = roles
        self.expansion_id = expansion_id  # what queries are padded with: [MASK] (else EOS, else PAD, as PyLate)

    def encode(self, texts: Sequence[str], role: str) -> ModelInputs:
        """Token ids of texts as `role` inputs, how many were truncated, key lengths and kept tokens."""
        spec, tokenizer = self.roles[role], self.tokenizers[role]
        ids, truncated = tokenizer.encode([t.strip() for t in texts])  # as PyLate's tokenize (a BPE space counts)
        if spec.marker_id is not None:
            ids = [s[:1] + [spec.marker_id] + s[1:] for s in ids]
        key_lengths = None
        if spec.expand:
            if not spec.attend_expansion:
                key_lengths = [len(s) for s in ids]
            ids = [s + [self.expansion_id] * (spec.length - len(s)) for s in ids]
        keep = None
        if spec.skiplist:
            skip = np.fromiter(spec.skiplist, dtype=np.int64)
            keep = [~np.isin(np.asarray(s, dtype=np.int64), skip) for s in ids]
        return ModelInputs(ids, truncated, key_lengths=key_lengths, keep=keep)

    def warn_truncated(self, truncated: int, total: int, role: str) -> None:
        """The one warning per call naming how many `role` inputs were cut."""
        self.tokenizers[role].warn_truncated(truncated, total)
