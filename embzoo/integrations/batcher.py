"""Dynamic batching for the server: one queue, one worker task and one model thread per served model.

Embedding jobs (a request's tokenized inputs) waiting in the queue are merged into one forward call: the worker
takes the first job, then the jobs behind it while their tokens fit `max_batch_tokens` and `max_wait_ms` has
not passed since the first one was queued, runs the merged inputs on the model's own thread
(`loop.run_in_executor`, so the event loop keeps serving), and gives each job its rows. Other jobs (a rerank, a
score) run alone on the same thread, in queue order. A job's result never depends on its neighbours beyond
floating-point rounding of the packed forward.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
    work: Callable[[], Any] | None = None  # any other job: run alone

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.inputs.ids) if self.inputs is not None else 0


class Batcher:
    """One model's queue and worker. embed: merged inputs → float32 [N, D] rows in order (None: the model takes
    no embedding jobs). metrics: the registry the server declared embzoo_batch_tokens, embzoo_batch_requests and
    embzoo_queue_depth in; they are labelled model=name."""

    def __init__(
        self,
        name: str,
        embed: Callable[[ModelInputs], torch.Tensor] | None,
        metrics: Metrics,
        *,
        max_batch_tokens: int,
        max_wait_ms: float,
        max_queue: int,
    ):
        if max_batch_tokens < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError(
                f"max_batch_tokens and max_queue must be positive and max_wait_ms ≥ 0; got {max_batch_tokens}, "
                f"{max_queue}, {max_wait_ms}"
            )
        self.name = name
        self.embed_fn = embed
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self._queue: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        """Jobs waiting (not yet running)."""
        return len(self._queue)

    def start(self) -> None:
        """Start the worker on the running event loop, and the model's thread."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embzoo-{self.name}")
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def close(self) -> None:
        """Take no new jobs, finish the queued ones, then stop the worker and the model's thread."""
        self._closing = True
        self._arrived.set()
        if self._worker is not None:
            await self._worker
            self._executor.shutdown(wait=True)

    async def embed(self, inputs: ModelInputs, finish: Callable[[torch.Tensor], Any]) -> Any:
        """finish(rows) of the inputs' rows [n, D], computed in a merged batch; QueueFull or NotRunning when the
        job cannot be queued."""
        if self.embed_fn is None:
            raise ValueError(f"{self.name} takes no embedding jobs")
        return await self._submit(_Job(self._future(), self._now(), inputs=inputs, finish=finish))

    async def call(self, work: Callable[[], Any]) -> Any:
        """work() run alone on the model's thread, in queue order; QueueFull or NotRunning as embed."""
        return await self._submit(_Job(self._future(), self._now(), work=work))

    def _future(self) -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def _submit(self, job: _Job) -> Any:
        if self._worker is None or self._closing:
            raise NotRunning(f"{self.name} is {'shutting down' if self._closing else 'not started'}")
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"{self.name} has {len(self._queue)} requests queued (the limit, --max-queue)")
        self._queue.append(job)
        self._depth_changed()
        self._arrived.set()
        return await job.future

    def _depth_changed(self) -> None:
        self.metrics.set("embzoo_queue_depth", len(self._queue), model=self.name)

    async def _wait(self, deadline: float | None) -> bool:
        """True once a job is queued; False when the deadline (loop time; None: none) passes first, or the
        queue is empty while closing. Closing never waits for a deadline."""
        while not self._queue:
            if self._closing:
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
            batch = [self._queue.popleft()]
            if batch[0].inputs is not None:
                tokens, deadline = batch[0].tokens, batch[0].queued_at + self.max_wait
                while tokens < self.max_batch_tokens and await self._wait(deadline):
                    head = self._queue[0]
                    if head.inputs is None or tokens + head.tokens > self.max_batch_tokens:
                        break
                    batch.append(self._queue.popleft())
                    tokens += head.tokens
                self.metrics.observe("embzoo_batch_tokens", tokens, model=self.name)
                self.metrics.observe("embzoo_batch_requests", len(batch), model=self.name)
            self._depth_changed()
            batch = [job for job in batch if not job.future.done()]  # a client that went away: skip its job
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Job]) -> None:
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, self._compute, batch)
        except Exception as error:  # the model failed: every request of the batch gets the error
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(result)

    def _compute(self, batch: list[_Job]) -> list[Any]:
        """On the model's thread: a job run alone, or the merged embedding jobs' forward split into each
        job's result."""
        if batch[0].inputs is None:
            return [batch[0].work()]
        rows = self.embed_fn(ModelInputs.concat([job.inputs for job in batch]))
        parts = rows.split([len(job.inputs.ids) for job in batch])
        return [job.finish(part) for job, part in zip(batch, parts, strict=True)]
