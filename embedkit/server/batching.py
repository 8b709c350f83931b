"""Dynamic batching: concurrent requests share forward passes, packed by the batcher's own token budget.

Requests arrive tokenized and truncated (token ids, prompt and special tokens included: the app's one
tokenisation), so the budget counts exactly the tokens that run. A single worker takes the oldest
request and every queued request behind it whose tokens fit `max_batch_tokens` (and
`max_batch_requests`, when set): one pass. The pass's rows become one TokenBatch
(`embedkit.local.batching`, the runtime's own batch type), cut longest first into parts of at most
`max_batch_tokens` padded tokens, and each part is handed to the model on a dedicated thread (the model
runs one batch at a time; torch's own threads parallelise inside it). The budget is the batcher's alone:
the embedder's own `batch_tokens` is neither read nor changed.

If a pass fails, each of its requests runs again alone, so one request's failure is never another's.
Vectors come back raw (unnormalised): each request applies its own dimensions / normalize afterwards.
How many requests may wait is the app's decision (it answers 429 before queueing), not this queue's.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from embedkit.local.embedder import LocalEmbedder
from embedkit.memory import release_freed_memory

__all__ = ["DynamicBatcher", "Overloaded"]


class Overloaded(Exception):
    """The batcher takes no more work (the server is shutting down)."""


@dataclass
class _Request:
    ids: list[list[int]]  # per input: the model's input ids, already truncated
    task: str | None
    future: asyncio.Future[np.ndarray]
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def tokens(self) -> int:
        return sum(len(row) for row in self.ids)


class DynamicBatcher:
    """Runs `embedder` over queued requests' token ids, a pass at a time, within `max_batch_tokens`.

    `on_batch(inputs, tokens, seconds)` is called after each pass that succeeds (the server's metrics).
    The embedder is never changed: its own `batch_tokens` is its memory bound, this budget the server's.
    Start it inside the event loop that will call `embed`; `close` drains it.
    """

    def __init__(
        self,
        embedder: LocalEmbedder,
        *,
        max_batch_tokens: int,
        max_batch_requests: int | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self._embedder = embedder
        self.max_batch_tokens = max_batch_tokens  # padded tokens per forward pass: this batcher's, not the embedder's
        self._max_batch_requests = max_batch_requests
        self._on_batch = on_batch
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_texts = 0
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedkit-model")
        self._worker: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def queued_texts(self) -> int:
        """Inputs waiting for the model (the te_queue_size gauge)."""
        return self._queued_texts

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="embedkit-batcher")

    async def close(self) -> None:
        """Finish every queued request, then stop."""
        self._closing = True
        self._wake.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    async def embed(self, ids: list[list[int]], *, task: str | None) -> np.ndarray:
        """Raw vectors [len(ids), dimension] for one request's token ids (one task), computed together
        with whatever else is queued. Raises Overloaded while shutting down, and whatever the model
        call raised (InputError included) for this request alone."""
        if self._closing:
            raise Overloaded("the server is shutting down")
        request = _Request(ids, task, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._queued_texts += len(ids)
        self._wake.set()
        return await request.future

    def _take(self) -> list[_Request]:
        taken = [self._queue.popleft()]
        tokens = taken[0].tokens
        while self._queue and (self._max_batch_requests is None or len(taken) < self._max_batch_requests):
            if tokens + self._queue[0].tokens > self.max_batch_tokens:
                break
            tokens += self._queue[0].tokens
            taken.append(self._queue.popleft())
        self._queued_texts -= sum(len(r.ids) for r in taken)
        return taken

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            requests = self._take()
            try:
                results = await self._pass(requests)
            except Exception as exc:
                if len(requests) == 1:
                    _fail(requests[0], exc)
                    continue
                for request in requests:  # alone, so only the request that fails gets the error
                    try:
                        (vectors,) = await self._pass([request])
                    except Exception as alone:
                        _fail(request, alone)
                    else:
                        _deliver(request, vectors)
                continue
            for request, vectors in zip(requests, results, strict=True):
                _deliver(request, vectors)

    async def _pass(self, requests: list[_Request]) -> list[np.ndarray]:
        """One pass on the model thread for `requests` (a forward call per packed group), recorded by
        `on_batch` when it succeeds."""
        start = time.perf_counter()
        results = await asyncio.get_running_loop().run_in_executor(self._executor, self._forward, requests)
        if self._on_batch is not None:
            seconds = time.perf_counter() - start
            self._on_batch(sum(len(r.ids) for r in requests), sum(r.tokens for r in requests), seconds)
        return results

    def _forward(self, requests: list[_Request]) -> list[np.ndarray]:
        ids = [row for request in requests for row in request.ids]
        tasks = [request.task for request in requests for _ in request.ids]
        vectors = self._run_rows(ids, tasks)
        release_freed_memory()  # a busy server's RSS would otherwise creep (see embedkit.memory)
        out, start = [], 0
        for request in requests:
            out.append(vectors[start : start + len(request.ids)])
            start += len(request.ids)
        return out

    def _run_rows(self, ids: list[list[int]], tasks: list[str | None]) -> np.ndarray:
        """Raw vectors [len(ids), dimension] in row order: one TokenBatch of every row (ids checked,
        lengths refused past the model's limit, each row's adapter and prompt length planned once), cut
        within this batcher's budget longest first, one model call per part. The one place the batcher
        calls the model."""
        # the app cut every input to its limit already; a longer row is refused here, not truncated
        whole = self._embedder.token_batch(ids, task=tasks)
        parts = whole.split(self.max_batch_tokens, self._embedder.max_batch_size)
        raw = [self._embedder.embed_token_batch(part) for part in parts]
        vectors = np.empty((len(ids), raw[0].shape[1]), dtype=raw[0].dtype)
        vectors[[i for part in parts for i in part.indices]] = np.concatenate(raw)
        return vectors


def _deliver(request: _Request, vectors: np.ndarray) -> None:
    if not request.future.done():  # the client may have gone away
        request.future.set_result(vectors)


def _fail(request: _Request, exc: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(exc)
