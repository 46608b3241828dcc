"""Text → token ids with the checkpoint's own fast tokenizer, truncated to the model's limit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

log = logging.getLogger(__name__)


class TextTokenizer:
    """Batched tokenization (the Rust tokenizer's thread pool), special tokens added, truncation to
    max_length tokens; callers report truncation once per call with warn_truncated."""

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

    def encode(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        """Token ids per text, and how many texts were truncated."""
        if self.lowercase:
            texts = [t.lower() for t in texts]
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=True)
        return [e.ids for e in encodings], sum(1 for e in encodings if e.overflowing)

    def warn_truncated(self, truncated: int, total: int) -> None:
        """The one warning per call that names how many inputs were cut (logged, so never deduplicated)."""
        if truncated:
            log.warning(
                "%d of %d inputs were longer than %d tokens and were truncated to that limit",
                truncated,
                total,
                self.max_length,
            )

    def prompt_length(self, prompt: str) -> int:
        """Tokens a prompt contributes at the start of a text (its trailing special token excluded)."""
        ids = self.encode([prompt])[0][0]
        return len(ids) - 1 if ids and ids[-1] in self.special_ids else len(ids)
