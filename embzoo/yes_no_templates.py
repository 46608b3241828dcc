"""Prompt templates of the generative yes/no rerankers, as PairInputs (see embzoo.reranker): byte-exact strings,
the instruction each takes, and truncation as in each model's reference code.

Every template tokenizes its pieces separately, as the reference does, so the ids match the reference's
token for token; only the query/document body is ever cut (from the end, or from the start where the tokenizer's
truncation_side is "left", as the references' tokenizer calls do), the template around it is kept whole. `length`
is the reference's own max_length argument; `max_length` is what it makes a pair's total (template
included, default instruction). `score_tokens()` names the LM-head rows the score is read from:
(positive, negative) → logit(positive) − logit(negative), or (positive, None) → logit(positive).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from tokenizers import Encoding

from embzoo.catalog import WEB_SEARCH
from embzoo.reranker import EncodedPairs
from embzoo.tokenization import plain_backend, warn_truncated

# Qwen3-Reranker (its model card's format_instruction and process_inputs)
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_BODY = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

# mxbai-rerank-v2 (mixedbread-ai/mxbai-rerank, MxbaiRerankV2)
MXBAI_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_SEP = "\n"
MXBAI_INSTRUCTION = "instruction: {instruction}"
MXBAI_QUERY = "query: {query}"
MXBAI_DOCUMENT = "document: {document}"
MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)

# bge-reranker-v2-gemma (its model card's get_inputs; FlagEmbedding's LLM reranker)
BGE_GEMMA_QUERY = "A: {query}"
BGE_GEMMA_PASSAGE = "B: {passage}"
BGE_GEMMA_SEP = "\n"
BGE_GEMMA_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing "
    "a prediction of either 'Yes' or 'No'."
)


class PromptPairs:
    """What the three templates share: the tokenizer, piecewise tokenization and the truncation warning."""

    default_instruction: ClassVar[str | None]
    activation: ClassVar[str]  # the reference's default output: "sigmoid" (a probability) or "none" (the logit)
    cut: ClassVar[str]  # what truncation cuts, for the warning
    max_length: int

    def __init__(self, tokenizer: Any, length: int):
        self.tokenizer = plain_backend(tokenizer)
        self.length = length
        self.side = tokenizer.truncation_side

    def keep(self, ids: list[int], n: int) -> list[int]:
        """At most n of ids, cut from the tokenizer's truncation side."""
        return ids[max(len(ids) - n, 0) :] if self.side == "left" else ids[:n]

    @classmethod
    def sized(cls, tokenizer: Any, length: int, max_seq_length: int | None, positions: int) -> PromptPairs:
        """The template at the reference's `length`, re-sized so that a pair's total is max_seq_length (None =
        the reference's total capped at `positions`); the template's own tokens stay, the body's budget changes."""
        inputs = cls(tokenizer, length)
        total = min(inputs.max_length, positions) if max_seq_length is None else max_seq_length
        return inputs if total == inputs.max_length else cls(tokenizer, total - (inputs.max_length - inputs.length))

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text on its own, no special tokens added (the references' add_special_tokens=False)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def first_id(self, text: str) -> int:
        """The first token of `text` (how mxbai and bge pick the rows of "1", "0", "Yes")."""
        ids = self.ids([text])[0]
        if not ids:
            raise ValueError(f"the tokenizer turns {text!r} into no token; this checkpoint's tokenizer does not fit")
        return ids[0]

    def cut_pair(self, first: list[int], second: list[int]) -> tuple[list[int], bool]:
        """first + second cut to `length` tokens by shortening second (transformers' prepare_for_model with
        truncation="only_second"); and whether anything was cut."""
        room = self.length - len(first)
        return first + self.keep(second, room), len(second) > room

    def check_length(self, budget: int, what: str) -> None:
        if budget < 8:
            raise ValueError(
                f"max_length leaves {budget} tokens for the {what} after the template's "
                f"{self.max_length - budget}; pass a larger max_seq_length"
            )

    def warn_truncated(self, truncated: int, total: int) -> None:
        """The one warning per call that names how many pairs were cut."""
        end = "start" if self.side == "left" else "end"
        how = f"longer than {self.max_length} tokens and were truncated ({self.cut}, from the {end})"
        warn_truncated(truncated, total, "(query, document) pairs", how)


class Qwen3RerankerPairs(PromptPairs):
    """Qwen3-Reranker: QWEN3_PREFIX + body + QWEN3_SUFFIX, the body (QWEN3_BODY with the instruction, query and
    document) tokenized as the card's tokenizer(pairs) call does and cut (on its truncation side) to length − |prefix| −
    |suffix| tokens; `length` = the whole pair. Score l("yes") − l("no"); the card returns its sigmoid."""

    default_instruction = WEB_SEARCH
    activation = "sigmoid"
    cut = "each instruction + query + document body"

    def __init__(self, tokenizer: Any, length: int):
        super().__init__(tokenizer, length)
        self.max_length = length
        self.prefix, self.suffix = self.ids([QWEN3_PREFIX, QWEN3_SUFFIX])
        budget = length - len(self.prefix) - len(self.suffix)
        self.check_length(budget, "instruction, query and document")
        self.body = plain_backend(tokenizer)
        self.body.enable_truncation(max_length=budget, direction=self.side)

    def encode(self, queries: Sequence[str], documents: Sequence[str], instruction: str | None) -> EncodedPairs:
        instruction = self.default_instruction if instruction is None else instruction
        texts = [
            QWEN3_BODY.format(instruction=instruction, query=q, document=d)
            for q, d in zip(queries, documents, strict=True)
        ]
        bodies: list[Encoding] = self.body.encode_batch(texts, add_special_tokens=True)
        ids = [self.prefix + e.ids + self.suffix for e in bodies]
        return EncodedPairs(ids, None, sum(1 for e in bodies if e.overflowing))

    def score_tokens(self) -> tuple[int, int | None]:
        """The vocabulary entries "yes" and "no" (the card's convert_tokens_to_ids)."""
        found = [self.tokenizer.token_to_id(t) for t in ("yes", "no")]
        if None in found:
            raise ValueError("this tokenizer has no 'yes' / 'no' tokens; a Qwen3-Reranker checkpoint's tokenizer has")
        return found[0], found[1]


class MxbaiRerankV2Pairs(PromptPairs):
    """mxbai-rerank-v2: MXBAI_PREFIX + query part + (MXBAI_SEP + document part) + MXBAI_SEP + MXBAI_TASK +
    MXBAI_SUFFIX. The query part ("instruction: {i}" + MXBAI_SEP + "query: {q}", or "query: {q}" without an
    instruction) is cut to length · 3 // 4 tokens, the separator + "document: {d}" so that both fit `length`.
    The instruction is optional ("" = none, the default). Score l("1") − l("0"), returned raw by the reference."""

    default_instruction = ""
    activation = "none"
    cut = "queries to 3/4 of the budget, then documents"

    def __init__(self, tokenizer: Any, length: int):
        super().__init__(tokenizer, length)
        self.prefix, self.sep, self.task, self.suffix = self.ids([MXBAI_PREFIX, MXBAI_SEP, MXBAI_TASK, MXBAI_SUFFIX])
        self.tail = self.sep + self.task + self.suffix
        self.max_length = length + len(self.prefix) + len(self.tail)
        self.check_length(length, "query and document")

    def encode(self, queries: Sequence[str], documents: Sequence[str], instruction: str | None) -> EncodedPairs:
        lead = MXBAI_INSTRUCTION.format(instruction=instruction) + MXBAI_SEP if instruction else ""
        query_ids = self.ids([lead + MXBAI_QUERY.format(query=q) for q in queries])
        doc_ids = self.ids([MXBAI_DOCUMENT.format(document=d) for d in documents])
        limit, ids, truncated = self.length * 3 // 4, [], 0
        for q, d in zip(query_ids, doc_ids, strict=True):
            body, cut = self.cut_pair(self.keep(q, limit), self.sep + d)
            ids.append(self.prefix + body + self.tail)
            truncated += cut or len(q) > limit
        return EncodedPairs(ids, None, truncated)

    def score_tokens(self) -> tuple[int, int | None]:
        """The first tokens of "1" and "0"."""
        return self.first_id("1"), self.first_id("0")


class BgeGemmaPairs(PromptPairs):
    """bge-reranker-v2-gemma: [bos] + "A: {q}" cut to length · 3 // 4 tokens, + BGE_GEMMA_SEP + "B: {p}" cut so
    that the three fit `length`, + BGE_GEMMA_SEP + the instruction (the reference's `prompt`, BGE_GEMMA_PROMPT
    by default; its tokens come on top of `length`). Score l("Yes"), returned raw by the reference."""

    default_instruction = BGE_GEMMA_PROMPT
    activation = "none"
    cut = "queries to 3/4 of the budget, then passages"

    def __init__(self, tokenizer: Any, length: int):
        super().__init__(tokenizer, length)
        if tokenizer.bos_token_id is None:
            raise ValueError("bge-reranker-v2-gemma inputs start with the bos token, which this tokenizer lacks")
        self.bos = tokenizer.bos_token_id
        self.sep, prompt = self.ids([BGE_GEMMA_SEP, BGE_GEMMA_PROMPT])
        self.max_length = length + len(self.sep) + len(prompt)
        self.check_length(length, "query and passage")

    def encode(self, queries: Sequence[str], documents: Sequence[str], instruction: str | None) -> EncodedPairs:
        tail = self.sep + self.ids([self.default_instruction if instruction is None else instruction])[0]
        query_ids = self.ids([BGE_GEMMA_QUERY.format(query=q) for q in queries])
        passage_ids = self.ids([BGE_GEMMA_PASSAGE.format(passage=d) for d in documents])
        limit, ids, truncated = self.length * 3 // 4, [], 0
        for q, p in zip(query_ids, passage_ids, strict=True):
            body, cut = self.cut_pair([self.bos, *self.keep(q, limit)], self.sep + p)
            ids.append(body + tail)
            truncated += cut or len(q) > limit
        return EncodedPairs(ids, None, truncated)

    def score_tokens(self) -> tuple[int, int | None]:
        """The first token of "Yes"; no negative row."""
        return self.first_id("Yes"), None
