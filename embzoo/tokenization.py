"""Text → token ids with the checkpoint's own fast tokenizer, truncated to the model's limit."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer


class TruncationWarning(UserWarning):
    """Some inputs were longer than the model's limit and were cut."""


class TextTokenizer:
    """Batched tokenization (the Rust tokenizer's thread pool), special tokens added, truncation to
    max_length tokens with one warning per call naming how many inputs were cut."""

    def __init__(self, backend: Tokenizer, max_length: int, special_ids: set[int], lowercase: bool = False):
        self.backend = backend
        self.backend.no_padding()
        self.backend.enable_truncation(max_length=max_length)
        self.max_length = max_length
        self.special_ids = special_ids
        self.lowercase = lowercase

    @classmethod
    def from_folder(cls, folder: Path, max_length: int, lowercase: bool = False) -> TextTokenizer:
        """Load the folder's tokenizer as transformers would (tokenizer.json or vocab files)."""
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(folder))
        if not getattr(hf, "is_fast", False):
            raise ValueError(f"{folder}: no fast tokenizer could be built; add a tokenizer.json")
        backend = Tokenizer.from_str(hf.backend_tokenizer.to_str())
        return cls(backend, max_length, set(hf.all_special_ids), lowercase)

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text; warns once if any text was truncated."""
        if self.lowercase:
            texts = [t.lower() for t in texts]
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=True)
        cut = sum(1 for e in encodings if e.overflowing)
        if cut:
            warnings.warn(
                f"{cut} of {len(encodings)} inputs were longer than {self.max_length} tokens and were "
                "truncated to that limit",
                TruncationWarning,
                stacklevel=3,
            )
        return [e.ids for e in encodings]

    def prompt_length(self, prompt: str) -> int:
        """Tokens a prompt contributes at the start of a text (its trailing special token excluded)."""
        ids = self([prompt])[0]
        return len(ids) - 1 if ids and ids[-1] in self.special_ids else len(ids)
