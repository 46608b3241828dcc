"""Dynamic batching for the server: one queue, one worker task and one model thread per served model. Embedding jobs (a
request's tokenized inputs) waiting in the queue are merged into one forward call: the worker takes the first job,
then the jobs behind it while their tokens fit `max_batch_tokens`, they run with the same weights (task and named
adapter) and `max_wait_ms` has not passed since the first one was queued, runs the merged inputs on the model's own
thread (`loop.run_in_executor`, so the event loop keeps serving), and gives each job its rows. Other jobs (a rerank,
a score) run alone on the same thread, in queue order. A job's result never depends on its neighbours beyond
floating-point rounding of the packed forward.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from embzoo.integrations.metrics import Metrics
from embzoo.tokenization import ModelInputs


class QueueFull(Exception):
    """The model's queue holds max_queue jobs already; retry later."""


class NotRunning(Exception):
    """The batcher is not started yet, or is shutting down: it takes no new jobs."""


@dataclass
class _Job:
    future: asyncio.Future
    queued_at: float  # loop time
    inputs: ModelInputs | None = None  # an embedding job: merged with its neighbours
    finish: Callable[[torch.Tensor], Any] | None = None  # its rows [n, D] → its result (on the model thread)
    weights: dict[str, str] = field(default_factory=dict)  # embed's task / adapter keywords: merged jobs share them
    work: Callable[[], Any] | None = None  # any other job: run alone

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.inputs.ids) if self.inputs is not None else 0


class Batcher:
    """One model's queue and worker. embed: merged inputs (and a job's weights keywords) → float32 [N, D] rows in order
    (None: the model takes no embedding jobs). metrics: the registry the server declared embzoo_batch_tokens,
    embzoo_batch_requests and embzoo_queue_depth in; they are labelled model=name."""

    def __init__(
        self,
        name: str,
        embed: Callable[..., torch.Tensor] | None,
        metrics: Metrics,
        *,
        max_batch_tokens: int,
        max_wait_ms: float,
        max_queue: int,
        max_queue_tokens: int,
        max_preparing: int = 4,
    ):
        if min(max_batch_tokens, max_queue, max_queue_tokens, max_preparing) < 1 or max_wait_ms < 0:
            raise ValueError(
                "max_batch_tokens, max_queue, max_queue_tokens and max_preparing must be positive and max_wait_ms ≥ 0; "
                f"got {max_batch_tokens}, {max_queue}, {max_queue_tokens}, {max_preparing}, {max_wait_ms}"
            )
        self.name = name
        self.embed_fn = embed
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.max_queue_tokens = max_queue_tokens
        self._queue: deque[_Job] = deque()
        self._queued_tokens = 0
        self._preparing = 0  # requests holding a slot while they tokenize (or wait to)
        self._prepare_gate = asyncio.Semaphore(max_preparing)
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        """Jobs waiting (not yet running), and requests preparing one (see prepare)."""
        return len(self._queue) + self._preparing

    @property
    def alive(self) -> bool:
        """The worker is started and has not stopped (closing, or a crash)."""
        return self._worker is not None and not self._worker.done()

    @asynccontextmanager
    async def prepare(self) -> AsyncIterator[None]:
        """A queue slot held while a request prepares its job (tokenizes), at most max_preparing at once:
        QueueFull at once when the queue and the preparing requests fill max_queue, NotRunning when closing.
        Submit the job after leaving the block."""
        self._check_open()
        if self.depth >= self.max_queue:
            raise QueueFull(f"{self.name} has {self.depth} requests queued (the limit, --max-queue)")
        self._preparing += 1
        try:
            async with self._prepare_gate:
                yield
        finally:
            self._preparing -= 1
            self._arrived.set()  # a closing worker waits for the preparing requests (see _wait)

    def start(self) -> None:
        """Start the worker on the running event loop, and the model's thread."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embzoo-{self.name}")
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def close(self) -> None:
        """Take no new jobs, finish the queued ones, then stop the worker and the model's thread."""
        self._closing = True
        self._arrived.set()
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)  # a worker that died (see alive) stops too
            self._executor.shutdown(wait=True)

    async def embed(
        self,
        inputs: ModelInputs,
        finish: Callable[[torch.Tensor], Any],
        weights: dict[str, str] | None = None,
        *,
        prepared: bool = False,
    ) -> Any:
        """finish(rows) of the inputs' rows [n, D], computed in a batch merged with jobs of the same weights (embed's
        task / adapter keywords); QueueFull or NotRunning when the job cannot be queued. prepared: the caller held a
        prepare() slot and submits right after it (no await between): taken even once shutdown began."""
        if self.embed_fn is None:
            raise ValueError(f"{self.name} takes no embedding jobs")
        job = _Job(self._future(), self._now(), inputs=inputs, finish=finish, weights=dict(weights or {}))
        return await self._submit(job, prepared)

    async def call(self, work: Callable[[], Any]) -> Any:
        """work() run alone on the model's thread, in queue order; QueueFull or NotRunning as embed."""
        return await self._submit(_Job(self._future(), self._now(), work=work))

    def _future(self) -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _check_open(self) -> None:
        if self._worker is None or self._closing:
            raise NotRunning(f"{self.name} is {'shutting down' if self._closing else 'not started'}")

    async def _submit(self, job: _Job, prepared: bool = False) -> Any:
        if not (prepared and self.alive):
            self._check_open()
        if len(self._queue) + self._preparing >= self.max_queue:
            raise QueueFull(f"{self.name} has {self.depth} requests queued (the limit, --max-queue)")
        if self._queue and self._queued_tokens + job.tokens > self.max_queue_tokens:
            raise QueueFull(
                f"{self.name} has {self._queued_tokens} tokens queued; {job.tokens} more pass the limit "
                "(--max-queue-tokens)"
            )
        self._queue.append(job)
        self._queued_tokens += job.tokens
        self._depth_changed()
        self._arrived.set()
        try:
            return await job.future
        except asyncio.CancelledError:  # the client went away: free its slot if the job still waits
            if job in self._queue:
                self._queue.remove(job)
                self._queued_tokens -= job.tokens
                self._depth_changed()
            raise

    def _take(self) -> _Job:
        job = self._queue.popleft()
        self._queued_tokens -= job.tokens
        return job

    def _depth_changed(self) -> None:
        self.metrics.set("embzoo_queue_depth", len(self._queue), model=self.name)

    async def _wait(self, deadline: float | None) -> bool:
        """True once a job is queued; False when the deadline (loop time; None: none) passes first, or the
        queue is empty while closing with no request preparing (it submits right after). Closing never waits for a
        deadline."""
        while not self._queue:
            if self._closing and not self._preparing:
                return False
            timeout = None if deadline is None else deadline - self._now()
            if timeout is not None and timeout <= 0:
                return False
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    async def _work(self) -> None:
        while await self._wait(None):
            batch = [self._take()]
            if batch[0].inputs is not None:
                tokens, deadline = batch[0].tokens, batch[0].queued_at + self.max_wait
                while tokens < self.max_batch_tokens and await self._wait(deadline):
                    head = self._queue[0]
                    if (
                        head.inputs is None
                        or head.weights != batch[0].weights
                        or tokens + head.tokens > self.max_batch_tokens
                    ):
                        break
                    batch.append(self._take())
                    tokens += head.tokens
            self._depth_changed()
            batch = [job for job in batch if not job.future.done()]  # a client that went away: skip its job
            if not batch:
                continue
            if batch[0].inputs is not None:
                self.metrics.observe("embzoo_batch_tokens", sum(job.tokens for job in batch), model=self.name)
                self.metrics.observe("embzoo_batch_requests", len(batch), model=self.name)
            await self._run(batch)

    async def _run(self, batch: list[_Job]) -> None:
        try:
            outcomes = await asyncio.get_running_loop().run_in_executor(self._executor, self._compute, batch)
        except Exception as error:  # the forward failed: every request of the batch gets the error
            outcomes = [error] * len(batch)
        for job, outcome in zip(batch, outcomes, strict=True):
            if job.future.done():
                continue
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def _compute(self, batch: list[_Job]) -> list[Any]:
        """On the model's thread: a job run alone, or the merged embedding jobs' forward split into each
        job's result. A job's failure (its work or its finish) is its outcome, an exception: it fails that job
        alone."""
        if batch[0].inputs is None:
            return [_outcome(batch[0].work)]
        rows = self.embed_fn(ModelInputs.concat([job.inputs for job in batch]), **batch[0].weights)
        parts = rows.split([len(job.inputs.ids) for job in batch])
        return [_outcome(partial(job.finish, part)) for job, part in zip(batch, parts, strict=True)]


def _outcome(work: Callable[[], Any]) -> Any:
    """work()'s result, or the exception it raised."""
    try:
        return work()
    except Exception as error:
        return error
