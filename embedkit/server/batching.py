"""Dynamic batching: concurrent requests share forward passes, packed by token budget.

Requests wait in one bounded queue. A single worker takes the oldest request and every queued
request behind it that fits the token budget (and `max_batch_requests`, when set), runs them as ONE
`embed` call on a dedicated thread (the model runs one batch at a time; torch's own threads
parallelise inside it), and hands each request its rows. A full queue refuses at once (the caller
answers 429) instead of growing without limit. Vectors come back raw (unnormalised): each request
applies its own dimensions / normalize afterwards.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from embedkit.memory import release_freed_memory
from embedkit.runtime import LocalEmbedder

__all__ = ["Overloaded", "DynamicBatcher"]


class Overloaded(Exception):
    """The queue holds as many texts as it may; try again later."""


@dataclass
class _Request:
    texts: list[str]
    task: str | None
    tokens: int  # after truncation: what the request costs in a forward pass
    direction: str
    future: asyncio.Future[np.ndarray]
    queued_at: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(
        self,
        embedder: LocalEmbedder,
        *,
        max_batch_tokens: int,
        max_queued_texts: int,
        max_batch_requests: int | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self._embedder = embedder
        self._max_batch_tokens = max_batch_tokens
        self._max_queued_texts = max_queued_texts
        self._max_batch_requests = max_batch_requests
        self._on_batch = on_batch  # (texts, tokens, seconds) after each forward call, for metrics
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_texts = 0
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedkit-model")
        self._worker: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def queued_texts(self) -> int:
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

    async def embed(self, texts: Sequence[str], *, task: str | None, tokens: int, direction: str) -> np.ndarray:
        """Raw vectors for `texts` (one task), computed together with whatever else is queued."""
        if self._closing:
            raise Overloaded("the server is shutting down")
        if self._queued_texts + len(texts) > self._max_queued_texts:
            raise Overloaded(f"{self._queued_texts} texts are queued (limit {self._max_queued_texts})")
        request = _Request(list(texts), task, tokens, direction, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._queued_texts += len(texts)
        self._wake.set()
        return await request.future

    def _take(self) -> list[_Request]:
        taken = [self._queue.popleft()]
        tokens = taken[0].tokens
        while self._queue and (self._max_batch_requests is None or len(taken) < self._max_batch_requests):
            if tokens + self._queue[0].tokens > self._max_batch_tokens:
                break
            tokens += self._queue[0].tokens
            taken.append(self._queue.popleft())
        self._queued_texts -= sum(len(r.texts) for r in taken)
        return taken

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            requests = self._take()
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._forward, requests)
            except Exception as exc:  # every request of the failed call gets the error
                for request in requests:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            if self._on_batch is not None:
                seconds = time.perf_counter() - start
                self._on_batch(sum(len(r.texts) for r in requests), sum(r.tokens for r in requests), seconds)
            for request, vectors in zip(requests, results, strict=True):
                if not request.future.done():  # the client may have gone away
                    request.future.set_result(vectors)

    def _forward(self, requests: list[_Request]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(requests)
        for direction in dict.fromkeys(r.direction for r in requests):
            group = [i for i, r in enumerate(requests) if r.direction == direction]
            texts = [text for i in group for text in requests[i].texts]
            tasks = [requests[i].task for i in group for _ in requests[i].texts]
            vectors = self._embedder.embed(texts, task=tasks, normalize=False, truncation_direction=direction)
            start = 0
            for i in group:
                out[i] = vectors[start : start + len(requests[i].texts)]
                start += len(requests[i].texts)
        release_freed_memory()  # a busy server's RSS would otherwise creep (see embedkit.memory)
        return [vectors for vectors in out if vectors is not None]
