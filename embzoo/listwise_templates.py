"""jina-reranker-v3's listwise prompt: byte-exact strings, truncation and block splitting as its `rerank` does.

One prompt holds a query and a block of documents; the final-normed hidden state at each document's marker
token (<|embed_token|>) and at the query's (<|rerank_token|>, after the documents) are what the model scores.
Both marker strings are stripped from the query and the documents before they go in. Documents are cut to
2048 tokens and the query to 512 (a text that reaches the limit is decoded back from its cut tokens, as the
reference does); a list longer than a block (125 documents, or fewer once their tokens fill the context less
twice the query's) is split into blocks in order. That split counts document tokens only, so a block whose whole
prompt exceeds the model's positions is halved again until each prompt fits (never where the reference's fit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from embzoo.tokenization import plain_backend, warn_truncated

DOC_MARKER = "<|embed_token|>"
QUERY_MARKER = "<|rerank_token|>"
SYSTEM = (
    "<|im_start|>system\nYou are a search relevance expert who can determine a ranking of the passages based on how "
    "relevant they are to the query. If the query is a question, how relevant a passage is depends on how well it "
    "answers the question. If not, try to analyze the intent of the query and assess how well each passage satisfies "
    "the intent. If an instruction is provided, you should follow the instruction when determining the ranking."
    "<|im_end|>\n<|im_start|>user\n"
)
INTRO = (
    "I will provide you with {n} passages, each indicated by a numerical identifier. Rank the passages based on their "
    "relevance to query: {query}\n"
)
INSTRUCT = "<instruct>\n{instruction}\n</instruct>\n"
PASSAGE = '<passage id="{k}">\n{document}' + DOC_MARKER + "\n</passage>"
QUERY = "<query>\n{query}" + QUERY_MARKER + "\n</query>"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
BLOCK_DOCUMENTS = 125
QUERY_TOKENS = 512
DOCUMENT_TOKENS = 2048


def strip_markers(text: str) -> str:
    """`text` without the marker strings (the reference's sanitize_input)."""
    for marker in (QUERY_MARKER, DOC_MARKER):
        text = text.replace(marker, "")
    return text


def prompt(query: str, documents: Sequence[str], instruction: str | None = None) -> str:
    """The whole prompt of one block; markers are stripped from the query and documents, not the instruction."""
    query = strip_markers(query)
    body = INTRO.format(n=len(documents), query=query)
    if instruction:
        body += INSTRUCT.format(instruction=instruction)
    body += "\n".join(PASSAGE.format(k=k, document=strip_markers(d)) for k, d in enumerate(documents)) + "\n"
    return SYSTEM + body + QUERY.format(query=query) + SUFFIX


def blocks(
    lengths: Sequence[int], query_length: int, context: int, block_documents: int, document_tokens: int
) -> list[range]:
    """Consecutive document ranges, one per prompt: a block closes at `block_documents` documents or once the
    context less twice the query's tokens, minus its documents' tokens, is at most `document_tokens`."""
    out, start, capacity = [], 0, context - 2 * query_length
    for i, n in enumerate(lengths):
        capacity -= n
        if i + 1 - start >= block_documents or capacity <= document_tokens:
            out.append(range(start, i + 1))
            start, capacity = i + 1, context - 2 * query_length
    if start < len(lengths):
        out.append(range(start, len(lengths)))
    return out


@dataclass(frozen=True)
class Block:
    ids: list[int]  # the prompt's token ids
    documents: range  # which of the list's documents it holds


class JinaV3Prompts:
    """Turns a query and its documents into block prompts' token ids with the checkpoint's tokenizer.
    Its scores are cosines (activation "none"); nothing else applies.

    context: the reference's tokenizer.model_max_length (what block splitting fills); positions: the most tokens
    one prompt may have (the backbone's max_seq_len); the limits are the reference's `rerank` defaults, fixed at
    construction (each has its own truncating backend).
    query_id / doc_id: the marker tokens' ids in this tokenizer.
    """

    activation = "none"

    def __init__(
        self,
        tokenizer: Any,
        context: int,
        *,
        positions: int,
        block_documents: int = BLOCK_DOCUMENTS,
        query_tokens: int = QUERY_TOKENS,
        document_tokens: int = DOCUMENT_TOKENS,
    ):
        self.hf = tokenizer
        self.tokenizer = plain_backend(tokenizer)
        self.context, self.positions, self.block_documents = context, positions, block_documents
        self.query_tokens, self.document_tokens = query_tokens, document_tokens
        self.cutters = {}  # limit → a private backend truncating to it (never toggled: safe to share across threads)
        for limit in (query_tokens, document_tokens):
            self.cutters[limit] = plain_backend(tokenizer)
            self.cutters[limit].enable_truncation(max_length=limit)
        ids = [self.tokenizer.token_to_id(m) for m in (QUERY_MARKER, DOC_MARKER)]
        if None in ids:
            raise ValueError(
                f"the tokenizer lacks the marker tokens {QUERY_MARKER!r} / {DOC_MARKER!r}; "
                "use jina-reranker-v3's own tokenizer"
            )
        self.query_id, self.doc_id = ids

    @classmethod
    def sized(cls, tokenizer: Any, length: int, max_seq_length: int | None, positions: int) -> JinaV3Prompts:
        """Prompts whose blocks fill max_seq_length tokens (None = the tokenizer's model_max_length, as the
        reference, capped at `positions`); `length` (the catalog's) is not used: the reference reads the tokenizer."""
        context = min(tokenizer.model_max_length, positions) if max_seq_length is None else max_seq_length
        return cls(tokenizer, context, positions=positions)

    def truncate(self, texts: Sequence[str], limit: int) -> tuple[list[str], list[int], int]:
        """Texts cut to `limit` (query_tokens or document_tokens) tokens (one that reaches it is decoded from its
        tokens), their token counts, and how many were longer than the limit."""
        encodings = self.cutters[limit].encode_batch(list(texts), add_special_tokens=True)
        out = [self.hf.decode(e.ids) if len(e.ids) >= limit else t for t, e in zip(texts, encodings, strict=True)]
        return out, [len(e.ids) for e in encodings], sum(1 for e in encodings if e.overflowing)

    def encode(self, query: str, documents: Sequence[str], instruction: str | None) -> tuple[list[Block], int]:
        """The blocks of one list, in order, and how many of its texts (query included) were cut."""
        (query,), (query_length,), query_cut = self.truncate([query], self.query_tokens)
        docs, lengths, docs_cut = self.truncate(documents, self.document_tokens)
        ranges = blocks(lengths, query_length, self.context, self.block_documents, self.document_tokens)
        out = self.fit(query, docs, ranges, instruction)
        for block in out:
            found = (block.ids.count(self.query_id), block.ids.count(self.doc_id))
            if found != (1, len(block.documents)):
                raise ValueError(
                    f"a block prompt holds {found[0]} query and {found[1]} document marker tokens, not 1 and "
                    f"{len(block.documents)}: the instruction may not contain {QUERY_MARKER!r} or {DOC_MARKER!r}"
                )
        return out, query_cut + docs_cut

    def fit(self, query: str, docs: Sequence[str], ranges: Sequence[range], instruction: str | None) -> list[Block]:
        """The blocks of `ranges`, in order, each one whose prompt exceeds `positions` tokens halved until it fits."""
        prompts = [prompt(query, [docs[i] for i in r], instruction) for r in ranges]
        out: list[Block] = []
        for encoding, r in zip(self.tokenizer.encode_batch(prompts), ranges, strict=True):
            if len(encoding.ids) <= self.positions:
                out.append(Block(encoding.ids, r))
            elif len(r) > 1:
                out += self.fit(query, docs, [r[: len(r) // 2], r[len(r) // 2 :]], instruction)
            else:
                raise ValueError(
                    f"a prompt holding one document is {len(encoding.ids)} tokens, more than the model's "
                    f"{self.positions} positions; lower document_tokens ({self.document_tokens}) or query_tokens "
                    f"({self.query_tokens}), or shorten the instruction"
                )
        return out

    def warn_truncated(self, truncated: int, total: int) -> None:
        """The one warning per call naming how many texts were cut."""
        how = f"cut (queries to {self.query_tokens} tokens, documents to {self.document_tokens})"
        warn_truncated(truncated, total, "texts", how)
