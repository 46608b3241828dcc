"""The HTTP server's request bodies (pydantic models) and the checks of the fields whose JSON type varies
(an embedding `input`, rerank `documents`, score `text_1` / `text_2`); a bad value raises ApiError (400) naming
the field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr


class ApiError(Exception):
    """An error answer: HTTP status, a message saying what was wrong and how to fix it, the request field it
    concerns (param), and extra headers (Retry-After)."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, plus embzoo's prompt_name / prompt / instruction, task, adapter and truncate."""

    input: Any  # str | list[str] | list[int] | list[list[int]]: embedding_input checks it
    model: StrictStr | None = None
    dimensions: StrictInt | None = Field(default=None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: StrictStr | None = None  # accepted, unused
    prompt_name: StrictStr | None = None
    prompt: StrictStr | None = None
    instruction: StrictStr | None = None
    truncate: StrictBool = True
    task: StrictStr | None = None  # a task adapter and its instruction (jina-embeddings-v3), as encode(task=...)
    adapter: StrictStr | None = None  # a named adapter the model was loaded with, as encode(adapter=...)


class RerankRequest(BaseModel):
    """Cohere's / Jina's rerank request, plus an instruction for rerankers that take one."""

    query: StrictStr
    documents: list[Any]  # str or {"text": str}: document_texts checks them
    model: StrictStr | None = None
    top_n: StrictInt | None = Field(default=None, ge=1)
    return_documents: StrictBool = True
    instruction: StrictStr | None = None


class ScoreRequest(BaseModel):
    """vLLM's score request: text_1 and text_2 each a str or a list of str (see score_pairs)."""

    text_1: Any
    text_2: Any
    model: StrictStr | None = None
    instruction: StrictStr | None = None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _json_type(x: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return "null" if x is None else names.get(type(x), type(x).__name__)


def embedding_input(value: Any) -> tuple[str, list]:
    """("texts", [str, ...]) or ("ids", [[int, ...], ...]) from OpenAI's input: a string, a list of strings, a list
    of token ids or a list of such lists."""
    if isinstance(value, str):
        return "texts", [value]
    if isinstance(value, list) and value:
        forms = [  # (the first item's kind, what every item must be, the inputs)
            (lambda x: isinstance(x, str), lambda x: isinstance(x, str), ("texts", value)),
            (_is_int, _is_int, ("ids", [value])),
            (lambda x: isinstance(x, list), lambda x: isinstance(x, list) and all(map(_is_int, x)), ("ids", value)),
        ]
        for starts, ok, found in forms:
            if starts(value[0]):
                bad = next((i for i, x in enumerate(value) if not ok(x)), None)
                if bad is None:
                    return found
                break
        else:
            bad = 0
        raise ApiError(
            400,
            f"input[{bad}] is {_json_type(value[bad])}: input must be a string, a list of strings, a list of token ids "
            "(integers) or a list of lists of token ids, not a mix",
            "input",
        )
    what = "an empty list" if value == [] else _json_type(value)
    raise ApiError(
        400,
        f"input is {what}: pass a string, a non-empty list of strings, a list of token ids (integers) or a list of "
        "lists of token ids",
        "input",
    )


def document_texts(documents: list[Any]) -> list[str]:
    """The texts of rerank documents: strings, or objects {"text": str}."""
    if not documents:
        raise ApiError(400, "documents is an empty list: pass at least one document", "documents")
    texts = []
    for i, d in enumerate(documents):
        text = d.get("text") if isinstance(d, dict) else d
        if not isinstance(text, str):
            raise ApiError(
                400,
                f'documents[{i}] is {_json_type(d)}: each document is a string or an object {{"text": str}}',
                f"documents[{i}]",
            )
        texts.append(text)
    return texts


def _texts(value: Any, field: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, f"{field} is {_json_type(value)}: pass a string or a non-empty list of strings", field)
    return texts


def score_pairs(text_1: Any, text_2: Any) -> list[tuple[str, str]]:
    """The (text_1, text_2) pairs to score, as vLLM pairs them: one text_1 with each text_2 (1 to N), or the i-th of
    each list together (N to N, equal lengths)."""
    first, second = _texts(text_1, "text_1"), _texts(text_2, "text_2")
    if len(first) == 1:
        return [(first[0], t) for t in second]
    if len(first) != len(second):
        raise ApiError(
            400,
            f"text_1 has {len(first)} texts and text_2 {len(second)}: pass one text_1 (scored against each text_2) or "
            "lists of equal length (scored pairwise)",
            "text_2",
        )
    return list(zip(first, second, strict=True))
