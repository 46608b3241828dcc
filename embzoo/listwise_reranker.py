"""ListwiseReranker.rank / score: a query and its whole candidate list → relevance scores, for listwise rerankers
(jina-reranker-v3) whose prompt holds many documents at once; the sibling of embzoo.reranker.Reranker with the
same rank() and score() calls and results.

Each list becomes one or more block prompts (embzoo.listwise_templates); blocks of every list are packed into
token-budget batches, one sequence per block. A block gives a projected query vector and one vector per
document. A list's blocks are combined as the reference does: its query vector is the average of the blocks'
query vectors weighted by each block's max((1 + cos) / 2) over its documents, and a document's score is the
cosine between that vector and the document's vector (with one block: the block's own cosines).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from embzoo.listwise_templates import Block, JinaV3Prompts
from embzoo.modeling.batch import PackedBatch, moved
from embzoo.modeling.listwise import MarkerProjector
from embzoo.packing import token_budget_batches
from embzoo.reranker import Ranker, as_pairs


def combine_blocks(queries: torch.Tensor, documents: Sequence[torch.Tensor]) -> torch.Tensor:
    """One list's scores fp32 [N] from its blocks' query vectors [B, P] and document vectors ([n_b, P] each)."""
    cosines = [F.cosine_similarity(d, q[None], dim=-1) for q, d in zip(queries, documents, strict=True)]
    weights = torch.stack([((1 + c) / 2).max() for c in cosines])
    query = (weights[:, None] * queries).sum(0) / weights.sum()
    docs = torch.cat(list(documents))
    return docs @ query / (query.norm() * docs.norm(dim=-1))


class ListwiseReranker(Ranker):
    """Scores documents against a query with a listwise reranker checkpoint (load it with `embzoo.load`).

    Scores are cosines in [-1, 1] (the reference's relevance_score); there is no other activation.
    """

    def __init__(self, scorer: MarkerProjector, prompts: JinaV3Prompts, *, activation: str = "none", name: str = ""):
        if activation != "none":
            raise ValueError(f"{name or 'a listwise reranker'} scores by cosine only; activation {activation!r}")
        self.scorer = scorer.eval()
        self.prompts = prompts
        self.activation = activation
        self.name = name

    @property
    def max_seq_length(self) -> int:
        """Tokens one block prompt is meant to fill (what block splitting counts against)."""
        return self.prompts.context

    def __repr__(self) -> str:
        return f"ListwiseReranker({self.name!r}, max_seq_length={self.max_seq_length}, device={self.device})"

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        instruction: str | None = None,
        activation: str | None = None,
        batch_tokens: int | None = None,
    ) -> np.ndarray:
        """float32 [N] scores of (query, document) pairs, in order. The pairs of one query form one list (in the
        order given), ranked together as rank() would; instruction (None = none) goes into every prompt."""
        pairs = as_pairs(pairs)
        if activation not in (None, "none"):
            raise ValueError(f"{self.name or 'this reranker'} scores by cosine only; leave activation None or 'none'")
        if batch_tokens is None:
            batch_tokens = 65536 if self.device.type == "cuda" else 8192
        lists: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            lists.setdefault(query, []).append(i)
        scores = np.empty(len(pairs), dtype=np.float32)
        results = self._run(pairs, lists, instruction, batch_tokens)
        for members, list_scores in zip(lists.values(), results, strict=True):
            scores[members] = list_scores
        return scores

    @torch.inference_mode()
    def _run(
        self, pairs: list[tuple[str, str]], lists: dict[str, list[int]], instruction: str | None, batch_tokens: int
    ) -> list[np.ndarray]:
        """Each list's scores: all lists' blocks forwarded in length-sorted token-budget batches, then combined."""
        blocks: list[Block] = []
        mine: list[range] = []  # each list's block indices
        truncated = 0
        for query, members in lists.items():
            encoded, cut = self.prompts.encode(query, [pairs[i][1] for i in members], instruction)
            mine.append(range(len(blocks), len(blocks) + len(encoded)))
            blocks += encoded
            truncated += cut
        self.prompts.warn_truncated(truncated, len(lists) + len(pairs))
        queries: list[torch.Tensor] = [None] * len(blocks)  # type: ignore[list-item]
        documents: list[torch.Tensor] = [None] * len(blocks)  # type: ignore[list-item]
        for idx in token_budget_batches([len(b.ids) for b in blocks], batch_tokens):
            batch = PackedBatch.from_sequences([blocks[i].ids for i in idx])
            rows, *at = self.scorer.marker_rows(batch)
            q, d = self.scorer(batch.to(self.device), rows.to(self.device), *(moved(r, self.device) for r in at))
            per_block = d.split([len(blocks[i].documents) for i in idx])
            for row, (i, doc_vectors) in enumerate(zip(idx.tolist(), per_block, strict=True)):
                queries[i], documents[i] = q[row], doc_vectors
        return [
            combine_blocks(torch.stack([queries[i] for i in m]), [documents[i] for i in m]).cpu().numpy() for m in mine
        ]
