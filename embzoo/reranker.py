"""Reranker.rank / score: (query, document) pairs → relevance scores, on packed token-budget batches.

A Reranker is a `PairInputs` (how a model turns a query and a document into token ids: a tokenizer's
pair encoding for cross-encoders, a byte-exact prompt template for generative yes/no rerankers) and a
scorer module (PackedBatch → float32 [B] raw scores: a classification head's logit, or the one score
row a yes/no LM head was reduced to).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from embzoo.modeling.batch import PackedBatch
from embzoo.packing import batch_tokens_for, token_budget_batches

ACTIVATIONS = ("sigmoid", "none")  # "none" = the raw logit
PROGRESS_MIN_PAIRS = 1024


@dataclass(frozen=True)
class EncodedPairs:
    ids: list[list[int]]  # token ids per pair
    type_ids: list[list[int]] | None  # token-type ids per pair (BERT-style pairs), or None
    truncated: int  # how many pairs were cut to the model's limit


class PairInputs(Protocol):
    """Turns (query, document) pairs into token ids for one reranker family."""

    max_length: int  # tokens per pair, special tokens and template included
    default_instruction: str | None  # None: the model takes no instruction

    def encode(self, queries: Sequence[str], documents: Sequence[str], instruction: str | None) -> EncodedPairs:
        """Token ids of each pair (queries[i], documents[i]); instruction None = the default one."""

    def warn_truncated(self, truncated: int, total: int) -> None:
        """The one warning per call naming how many pairs were cut."""


class Ranker(ABC):
    """What every reranker `embzoo.load` returns offers (Reranker, ListwiseReranker): a subclass's score()
    and max_seq_length, and rank() on top of score(): one query's documents scored, sorted best first."""

    scorer: nn.Module
    name: str
    activation: str
    origin: Any = None  # embzoo.load sets it: the snapshot and recipe it came from (embzoo.loading.Origin)

    @property
    def device(self) -> torch.device:
        return next(self.scorer.parameters()).device

    @property
    @abstractmethod
    def max_seq_length(self) -> int:
        """The token limit the model's inputs are cut or packed to."""

    @abstractmethod
    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        instruction: str | None = None,
        activation: str | None = None,
        batch_tokens: int | None = None,
    ) -> np.ndarray:
        """float32 [N] scores of (query, document) pairs, in order."""

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int | None = None,
        instruction: str | None = None,
        return_documents: bool = False,
        activation: str | None = None,
        batch_tokens: int | None = None,
    ) -> list[dict[str, Any]]:
        """Documents sorted by score, best first: [{"index", "score", ("document")}], top_k of them."""

        def score(pairs: list[tuple[str, str]]) -> np.ndarray:
            return self.score(pairs, instruction=instruction, activation=activation, batch_tokens=batch_tokens)

        return ranked(query, documents, score, top_k=top_k, return_documents=return_documents)


def ranked(
    query: str,
    documents: Sequence[str],
    score: Callable[[list[tuple[str, str]]], np.ndarray],
    *,
    top_k: int | None = None,
    return_documents: bool = False,
) -> list[dict[str, Any]]:
    """One query's documents scored by `score` (pairs → float32 [N]), sorted best first: [{"index", "score",
    ("document")}], top_k of them. Shared by every rank() (rerankers, Embedder)."""
    if not isinstance(query, str):
        raise TypeError(f"rank expects the query as a str, got {type(query).__name__}")
    if isinstance(documents, str):
        raise TypeError("rank expects a list of documents, got one str; wrap it: [document]")
    documents = list(documents)
    if not documents:
        raise ValueError("rank needs at least one document; got an empty list")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive number of documents, got {top_k}")
    scores = score([(query, d) for d in documents])
    order = np.argsort(-scores, kind="stable")[:top_k]
    out = [{"index": int(i), "score": float(scores[i])} for i in order]
    if return_documents:
        for row in out:
            row["document"] = documents[row["index"]]
    return out


class Reranker(Ranker):
    """Scores (query, document) pairs with one reranker checkpoint (load it with `embzoo.load`)."""

    def __init__(self, scorer: nn.Module, inputs: PairInputs, *, activation: str = "sigmoid", name: str = ""):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {ACTIVATIONS}")
        self.scorer = scorer.eval()
        self.inputs = inputs
        self.activation = activation
        self.name = name

    @property
    def max_seq_length(self) -> int:
        return self.inputs.max_length

    def __repr__(self) -> str:
        return (
            f"Reranker({self.name!r}, max_seq_length={self.max_seq_length}, activation={self.activation!r}, "
            f"device={self.device})"
        )

    def to_cross_encoder(self) -> Any:
        """This reranker as a sentence-transformers CrossEncoder running on embzoo (predict, rank), its default
        activation this reranker's, its weights shared (see embzoo.integrations.sentence_transformers)."""
        from embzoo.integrations.sentence_transformers import cross_encoder

        return cross_encoder(self)

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        instruction: str | None = None,
        activation: str | None = None,
        batch_tokens: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """float32 [N] scores of (query, document) pairs, in order: the model's logit (activation "none") or
        its sigmoid ("sigmoid": a probability of relevance); None = self.activation, the checkpoint's default."""
        pairs = as_pairs(pairs)
        activation = self.activation if activation is None else activation
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; allowed: {ACTIVATIONS}")
        self._check_instruction(instruction)
        batch_tokens = batch_tokens_for(self.device, batch_tokens)
        show = len(pairs) >= PROGRESS_MIN_PAIRS if show_progress_bar is None else show_progress_bar
        logits = self._run(pairs, instruction, batch_tokens, show)
        return (torch.sigmoid(logits) if activation == "sigmoid" else logits).cpu().numpy()

    def _check_instruction(self, instruction: str | None) -> None:
        if instruction is not None and self.inputs.default_instruction is None:
            raise ValueError(f"{self.name or 'this reranker'} takes no instruction; leave instruction=None")

    @torch.inference_mode()
    def _run(
        self, pairs: list[tuple[str, str]], instruction: str | None, batch_tokens: int, show: bool
    ) -> torch.Tensor:
        """Encode all pairs, forward them in length-sorted token-budget batches, restore the caller's order."""
        queries, documents = [q for q, _ in pairs], [d for _, d in pairs]
        encoded = self.inputs.encode(queries, documents, instruction)
        self.inputs.warn_truncated(encoded.truncated, len(pairs))
        scores = torch.empty(len(pairs), dtype=torch.float32, device=self.device)
        with tqdm(total=len(pairs), disable=not show, desc="embzoo rerank", unit="pair") as bar:
            for idx in token_budget_batches([len(s) for s in encoded.ids], batch_tokens):
                types = None if encoded.type_ids is None else [encoded.type_ids[i] for i in idx]
                batch = PackedBatch.from_sequences([encoded.ids[i] for i in idx], types).to(self.device)
                scores[torch.from_numpy(idx).to(self.device)] = self.scorer(batch).float()
                bar.update(len(idx))
        return scores


def as_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, str) or len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise TypeError(f"score expects (query, document) string pairs; item {i} is {pair!r:.80}")
        out.append((pair[0], pair[1]))
    return out
