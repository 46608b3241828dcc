"""An OpenAI-compatible HTTP server for loaded models (FastAPI; `pip install 'embzoo[serve]'`, `embzoo serve`).

Endpoints: POST /v1/embeddings (OpenAI), /v1/rerank (Cohere / Jina), /v1/score (vLLM); GET /v1/models, /health,
/metrics (Prometheus text). Embedding requests to one model are batched together (embzoo.integrations.batcher);
reranks and scores run one request at a time on the same model thread. Errors answer OpenAI's shape
{"error": {"message", "type", "param", "code"}}: 400 bad field, 401 missing API key, 404 unknown model or route,
413 too many or too long inputs or too big a body, 429 queue full (Retry-After), 500 internal error (logged), 503
shutting down.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from embzoo.api import Embedder, InputTooLong
from embzoo.integrations.batcher import Batcher, NotRunning, QueueFull
from embzoo.integrations.metrics import CONTENT_TYPE, Metrics
from embzoo.integrations.server_inputs import (
    ApiError,
    EmbeddingRequest,
    RerankRequest,
    ScoreRequest,
    document_texts,
    embedding_input,
    score_pairs,
)
from embzoo.packing import counting_tokens
from embzoo.reranker import Ranker

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "service_unavailable",
}
log = logging.getLogger(__name__)
log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = tuple(2.0**k for k in range(4, 18))  # 16 … 131072 tokens
REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
POSITIVE_SETTINGS = (
    "max_batch_tokens",
    "max_queue",
    "max_inputs_per_request",
    "max_queue_tokens",
    "max_request_bytes",
)
ENDPOINTS = ("/v1/embeddings", "/v1/rerank", "/v1/score", "/v1/models", "/health", "/metrics")


@dataclass(frozen=True)
class ServerSettings:
    """api_key: required as `Authorization: Bearer KEY` on /v1/* (None: open). max_batch_tokens: tokens per merged
    forward; max_wait_ms: how long a queued embedding job waits for others to join its batch; max_queue: jobs
    waiting (or tokenizing) per model before 429; max_inputs_per_request: inputs, documents or pairs per request
    before 413; max_queue_tokens: tokens waiting per model before 429; max_request_bytes: request body size before
    413. ValueError for a limit that is not positive."""

    api_key: str | None = None
    max_batch_tokens: int = 16384
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_inputs_per_request: int = 2048
    max_queue_tokens: int = 1 << 20
    max_request_bytes: int = 8 << 20

    def __post_init__(self) -> None:
        limits = {name: getattr(self, name) for name in POSITIVE_SETTINGS}
        bad = {name: value for name, value in limits.items() if not value >= 1}
        if bad or not self.max_wait_ms >= 0:
            shown = ", ".join(f"{k}={v}" for k, v in bad.items()) or f"max_wait_ms={self.max_wait_ms}"
            raise ValueError(f"server settings: {shown}; the limits must be positive and max_wait_ms ≥ 0")


def _declare(metrics: Metrics) -> None:
    metrics.declare("embzoo_requests_total", "counter", "HTTP requests by endpoint and status code")
    metrics.declare("embzoo_request_duration_seconds", "histogram", "HTTP request latency by endpoint", LATENCY_BUCKETS)
    metrics.declare("embzoo_input_tokens_total", "counter", "tokens run (embeddings, rerank, score), by model")
    metrics.declare("embzoo_truncated_inputs_total", "counter", "embedding inputs cut to the model's limit, by model")
    metrics.declare("embzoo_batch_tokens", "histogram", "tokens per merged embedding forward, by model", TOKEN_BUCKETS)
    metrics.declare("embzoo_batch_requests", "histogram", "requests per merged embedding forward", REQUEST_BUCKETS)
    metrics.declare("embzoo_queue_depth", "gauge", "jobs waiting for the model, by model")


def _error(error: ApiError) -> JSONResponse:
    body = {"message": error.message, "type": ERROR_TYPES.get(error.status, "error"), "param": error.param}
    return JSONResponse({"error": {**body, "code": error.status}}, status_code=error.status, headers=error.headers)


def _field(loc: tuple) -> str:
    """A validation error's location as a field path: ("body", "documents", 2, "text") → documents[2].text."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "request body"


def _validation_error(error: RequestValidationError) -> ApiError:
    first = error.errors()[0]
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}")
    loc = tuple(first.get("loc", ()))
    if loc == ("body",) and first["type"] != "missing":
        return ApiError(400, "the request body must be a JSON object (sent as Content-Type: application/json)")
    field = _field(loc)
    shown = "input" in first and first["type"] != "missing"
    got = f" (got {json.dumps(first['input'], default=repr)[:80]})" if shown else ""
    return ApiError(400, f"{field}: {first['msg']}{got}", field)


async def _json(body: Any) -> Response:
    """The body as JSON, rendered off the event loop; a NaN or infinity raises ValueError (a 500), not invalid JSON."""
    text = await asyncio.to_thread(json.dumps, body, ensure_ascii=False, allow_nan=False)
    return Response(text, media_type="application/json")


def _vector(row: np.ndarray, encoding_format: str) -> list[float] | str:
    """One embedding as OpenAI returns it: floats, or base64 of little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
    return row.tolist()


def _counted(work: Callable[[], Any]) -> tuple[Any, int]:
    """work()'s answer and the tokens its model calls ran (a rerank's or score's usage)."""
    with counting_tokens() as count:
        answer = work()
    return answer, count.tokens


def _embedding_data(vectors: Any, encoding_format: str) -> list[dict]:
    """The data list of an embeddings answer."""
    return [
        {"object": "embedding", "index": i, "embedding": _vector(v, encoding_format)} for i, v in enumerate(vectors)
    ]


class _BodyLimit:
    """ASGI middleware answering 413 for a request body over `limit` bytes: at once from Content-Length, or while a
    body without one (chunked) is read."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body is over this server's limit of {self.limit} bytes; split the request")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _error(self._too_large())(scope, receive, send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, self._too_large().message)
            return message

        await self.app(scope, counted, send)


@contextmanager
def _queue_answers() -> Iterator[None]:
    """A batcher's refusals as answers: QueueFull → 429 (Retry-After), NotRunning → 503."""
    try:
        yield
    except QueueFull as error:
        raise ApiError(429, f"{error}; retry shortly", headers={"Retry-After": "1"}) from None
    except NotRunning as error:
        raise ApiError(503, str(error)) from None


class _Service:
    """The served models, their batchers and the metrics: what each endpoint handler calls."""

    def __init__(self, models: Mapping[str, Embedder | Ranker], settings: ServerSettings):
        if not models:
            raise ValueError("serve at least one model: create_app({name: embzoo.load(...)})")
        self.models = dict(models)
        self.settings = settings
        self.metrics = Metrics()
        _declare(self.metrics)
        limits = dict(
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            max_queue_tokens=settings.max_queue_tokens,
        )
        self.batchers = {
            name: Batcher(name, self._embed_fn(model), self.metrics, **limits) for name, model in self.models.items()
        }
        self.closing = False
        self.started = time.time()

    def _embed_fn(self, model: Embedder | Ranker) -> Any:
        if isinstance(model, Embedder) and "sentence" in model.model.outputs:
            return partial(model.sentence_vectors, batch_tokens=self.settings.max_batch_tokens)
        return None

    def pick(self, name: str | None) -> tuple[str, Embedder | Ranker]:
        """The requested model (None: the only one served); 404 naming the served ones."""
        served = ", ".join(self.models)
        if name is None:
            if len(self.models) == 1:
                return next(iter(self.models.items()))
            raise ApiError(400, f"pass model: this server runs {served}", "model")
        if name not in self.models:
            raise ApiError(404, f"model {name!r} is not served here; this server runs {served}", "model")
        return name, self.models[name]

    def check_count(self, count: int, field: str) -> None:
        limit = self.settings.max_inputs_per_request
        if count > limit:
            raise ApiError(
                413, f"{field} has {count} items, more than this server takes per request ({limit}); split it", field
            )

    async def run(self, submit: Any) -> Any:
        """await submit (a batcher job) as an answer (see _queue_answers). Any other error is the server's (500):
        requests are checked before they are queued."""
        with _queue_answers():
            return await submit

    async def embeddings(self, req: EmbeddingRequest) -> dict:
        name, model = self.pick(req.model)
        if not isinstance(model, Embedder) or "sentence" not in model.model.outputs:
            gives = "scores" if isinstance(model, Ranker) else f"{model.model.outputs[0]} vectors"
            raise ApiError(
                400, f"{name} gives {gives}, not dense embeddings: use /v1/rerank or /v1/score with it", "model"
            )
        kind, items = embedding_input(req.input)
        weights = self._weights(name, model, kind, req)
        self.check_count(len(items), "input")
        if req.dimensions is not None and req.dimensions > model.model.dimension:
            why = f"dimensions must be in 1..{model.model.dimension} for {name}; got {req.dimensions}"
            raise ApiError(400, why, "dimensions")
        prompts = {"prompt_name": req.prompt_name, "prompt": req.prompt, "instruction": req.instruction}
        prompts = {k: v for k, v in prompts.items() if v is not None}
        if kind == "ids" and prompts:
            raise ApiError(400, f"token-id inputs run as given; {', '.join(prompts)} apply to string inputs", "input")
        make = model.id_inputs if kind == "ids" else partial(model.tokenize, **prompts, task=req.task)
        batcher = self.batchers[name]
        try:  # a queue slot first (429 before any work), then off the event loop (the tokenizer releases the GIL)
            with _queue_answers():
                async with batcher.prepare():
                    inputs = await asyncio.to_thread(make, items, truncate=req.truncate)
        except InputTooLong as error:
            why = f"input {error.index} has {error.length} tokens, more than {name}'s limit of {error.limit}"
            raise ApiError(
                413, f'{why}; shorten it, or send "truncate": true to cut it', f"input[{error.index}]"
            ) from None
        except ValueError as error:  # the request's prompt options or token ids, checked by tokenize / id_inputs
            raise ApiError(400, str(error), "input" if kind == "ids" else None) from None
        finish = partial(model.finish_sentences, dimensions=req.dimensions)
        vectors = await self.run(batcher.embed(inputs, finish, weights, prepared=True))
        tokens = sum(len(s) for s in inputs.ids)
        self.metrics.inc("embzoo_input_tokens_total", tokens, model=name)
        self.metrics.inc("embzoo_truncated_inputs_total", inputs.truncated, model=name)
        data = await asyncio.to_thread(_embedding_data, vectors, req.encoding_format)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "truncated": inputs.truncated}
        return {"object": "list", "data": data, "model": name, "usage": usage}

    def _weights(self, name: str, model: Embedder, kind: str, req: EmbeddingRequest) -> dict[str, str]:
        """The request's task / adapter (sentence_vectors' keywords), checked; 400 for a request whose answer would
        differ from encode's: token ids with a task (its instruction is text) or for a pool that leaves out
        instruction tokens found from the text."""
        for field, asked in (("task", (req.task, None)), ("adapter", (None, req.adapter))):
            try:
                model.check_weights(*asked)
            except ValueError as error:
                raise ApiError(400, f"{field}: {error}", field) from None
        if kind == "ids" and req.task is not None:
            why = f"token ids cannot run with task {req.task!r}: its instruction is added to the text"
            raise ApiError(400, f"{why}; send the input as strings", "input")
        if kind == "ids" and model.instruction_mask != "prompt":
            why = f"{name} has instruction_mask={model.instruction_mask!r}: its pooled tokens are found from the text"
            raise ApiError(400, f"{why}, which token ids alone cannot reproduce; send the input as strings", "input")
        weights = {"task": req.task, "adapter": req.adapter}
        return {k: v for k, v in weights.items() if v is not None}

    def _instruction(self, model: Embedder | Ranker, instruction: str | None) -> dict[str, Any]:
        """The keyword arguments rank / score take from a request: a reranker's instruction."""
        if instruction is None:
            return {}
        if not isinstance(model, Ranker):
            raise ApiError(400, f"{model.name} is an embedding model: it takes no instruction", "instruction")
        if model.inputs.default_instruction is None:
            raise ApiError(400, f"{model.name} takes no instruction; leave instruction out", "instruction")
        return {"instruction": instruction}

    async def rerank(self, req: RerankRequest) -> dict:
        name, model = self.pick(req.model)
        documents = document_texts(req.documents)
        self.check_count(len(documents), "documents")
        work = partial(model.rank, req.query, documents, top_k=req.top_n, **self._instruction(model, req.instruction))
        rows, tokens = await self.run(self.batchers[name].call(partial(_counted, work)))
        self.metrics.inc("embzoo_input_tokens_total", tokens, model=name)
        results = []
        for row in rows:
            result = {"index": row["index"], "relevance_score": row["score"]}
            if req.return_documents:
                result["document"] = {"text": documents[row["index"]]}
            results.append(result)
        return {"results": results, "model": name, "usage": {"total_tokens": tokens, "documents": len(documents)}}

    async def score(self, req: ScoreRequest) -> dict:
        name, model = self.pick(req.model)
        pairs = score_pairs(req.text_1, req.text_2)
        self.check_count(len(pairs), "text_2")
        work = partial(model.score, pairs, **self._instruction(model, req.instruction))
        scores, tokens = await self.run(self.batchers[name].call(partial(_counted, work)))
        self.metrics.inc("embzoo_input_tokens_total", tokens, model=name)
        data = [{"index": i, "object": "score", "score": float(s)} for i, s in enumerate(scores)]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens, "pairs": len(pairs)}
        return {"object": "list", "data": data, "model": name, "usage": usage}

    def model_list(self) -> dict:
        data = [
            {
                "id": name,
                "object": "model",
                "created": int(self.started),
                "owned_by": "embzoo",
                "max_model_len": model.max_seq_length,
            }
            for name, model in self.models.items()
        ]
        return {"object": "list", "data": data}

    def require_key(self, request: Request) -> None:
        """401 unless the request carries `Authorization: Bearer <api_key>` (the scheme in any case)."""
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
            missing = "authorization" not in request.headers
            why = "no Authorization header" if missing else "a wrong API key"
            raise ApiError(401, f"{why}: send `Authorization: Bearer <the server's --api-key>`")

    async def start(self) -> None:
        for batcher in self.batchers.values():
            batcher.start()

    async def stop(self) -> None:
        """Refuse new work (503), finish what is queued."""
        self.closing = True
        await asyncio.gather(*(b.close() for b in self.batchers.values()))


def create_app(models: Mapping[str, Embedder | Ranker], settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI app serving the models under their names (the `model` field of requests). Its lifespan starts
    each model's batcher and, on shutdown, refuses new work and finishes the queued jobs. app.state.service holds
    the served models, batchers and metrics."""
    service = _Service(models, settings or ServerSettings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        yield
        await service.stop()

    hidden = {"docs_url": None, "redoc_url": None, "openapi_url": None} if service.settings.api_key else {}
    app = FastAPI(title="embzoo", lifespan=lifespan, **hidden)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(_validation_error(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = f"no endpoint {request.url.path}; this server answers {', '.join(ENDPOINTS)}"
        elif error.status_code == 405:
            message = f"{request.url.path} does not take {request.method}"
        else:
            message = str(error.detail)
        return _error(ApiError(error.status_code, message, headers=error.headers))

    app.add_middleware(_BodyLimit, limit=service.settings.max_request_bytes)

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        path = request.url.path
        endpoint = path if path in ENDPOINTS else "other"
        status = 500
        try:
            try:
                response = await call_next(request)
            except Exception:
                log.exception("%s %s failed", request.method, path)
                response = _error(ApiError(500, "internal error"))
            status = response.status_code
            return response
        finally:
            service.metrics.inc("embzoo_requests_total", endpoint=endpoint, status=str(status))
            service.metrics.observe("embzoo_request_duration_seconds", time.perf_counter() - start, endpoint=endpoint)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(service.require_key)])

    @v1.post("/embeddings")
    async def embeddings(req: EmbeddingRequest) -> Response:
        return await _json(await service.embeddings(req))

    @v1.post("/rerank")
    async def rerank(req: RerankRequest) -> Response:
        return await _json(await service.rerank(req))

    @v1.post("/score")
    async def score(req: ScoreRequest) -> Response:
        return await _json(await service.score(req))

    @v1.get("/models")
    async def model_list() -> Response:
        return await _json(service.model_list())

    app.include_router(v1)

    @app.get("/health")
    async def health() -> Response:
        dead = [name for name, batcher in service.batchers.items() if not batcher.alive]
        if service.closing or dead:
            why = "shutting down" if service.closing else f"the worker of {', '.join(dead)} stopped"
            return JSONResponse({"status": why}, status_code=503)
        return JSONResponse({"status": "ok", "models": list(service.models)})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    return app
