"""The client's multi-step exchanges, written once as generators that the sync and async shells drive.

A flow yields what it needs done and is sent back the result:

    yields                      is sent back
    httpx.Request               an Answer (response + body read up to max_response_bytes), or the
                                httpx.TransportError the exchange ended in
    Sleep(seconds)              None, once that time has passed

and it ends by returning its value (StopIteration.value) or raising a typed embedkit error. So retrying,
backing off, honouring Retry-After, giving up in time and splitting a refused batch are decided here, in
one place, while TEIClient sends with httpx.Client and sleeps with time.sleep, and AsyncTEIClient sends with
httpx.AsyncClient (a semaphore bounding the requests in flight) and sleeps with asyncio.sleep:

    reply = None
    while True:
        step = flow.send(reply)            # StopIteration carries the result
        reply = sleep(step.seconds) if isinstance(step, Sleep) else exchange(step)

(httpx drives its auth flows the same way.)
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

import httpx
import numpy as np

from embedkit.errors import InputError, RemoteError
from embedkit.remote.models import Answer, Batch, RerankBatch
from embedkit.remote.settings import ClientSettings
from embedkit.remote.status import TooLarge, Transient, raise_for_status, scrub

__all__ = [
    "Flow",
    "Reader",
    "Reply",
    "Sleep",
    "Step",
    "checked",
    "concatenated",
    "embed_batch",
    "health",
    "retried",
    "sent_in_parts",
]

logger = logging.getLogger("embedkit.remote")

T = TypeVar("T")


@dataclass(frozen=True)
class Sleep:
    """Wait this many seconds before the flow goes on."""

    seconds: float


Step = httpx.Request | Sleep
Reply = Answer | httpx.TransportError | None
Flow = Generator[Step, Reply, T]

# (answer, body) -> result, raising Transient / TooLarge / a typed error for what the answer says
Reader = Callable[[Answer, bytes], T]


def _answer(reply: Reply, request: httpx.Request, settings: ClientSettings) -> tuple[Answer, bytes]:
    """The answer and its full body; what went wrong otherwise (Transient for a transport error)."""
    where = f"{request.method} {request.url.path}"
    if isinstance(reply, httpx.TransportError):
        kind = "timed out" if isinstance(reply, httpx.TimeoutException) else "failed"
        raise Transient(f"{where} {kind}: {type(reply).__name__}: {scrub(str(reply), settings.api_key)}")
    if not isinstance(reply, Answer):
        raise TypeError(f"a flow that yields a request must be sent an Answer or a TransportError, got {reply!r}")
    if reply.body is None:
        raise RemoteError(f"{where}: the answer exceeded max_response_bytes={settings.max_response_bytes}")
    return reply, reply.body


def checked(settings: ClientSettings, read: Reader[T], batch: Batch | RerankBatch | None = None) -> Reader[T]:
    """`read`, after the status table has had its say (see status.py)."""

    def read_checked(answer: Answer, body: bytes) -> T:
        raise_for_status(answer, body, api_key=settings.api_key, batch=batch)
        return read(answer, body)

    return read_checked


def retried(
    settings: ClientSettings,
    request: Callable[[], httpx.Request],
    read: Reader[T],
    *,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = random.random,
) -> Flow[T]:
    """Send `request()` until `read` accepts an answer, as settings.retry allows.

    A Transient (connection trouble, timeout, 429, 502-504) is retried after RetryPolicy.wait (the server's
    Retry-After when it gave one); after `attempts` tries, or when the next wait would end past
    `total_seconds` from the first try, RemoteError "gave up after N attempt(s)" with the last status.
    Anything else `read` raises (TooLarge included) ends the flow at once.
    """
    policy = settings.retry
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        sent = request()
        reply = yield sent
        try:
            return read(*_answer(reply, sent, settings))
        except Transient as error:
            last = error
        wait = policy.wait(attempt, last.retry_after, jitter())
        if attempt >= policy.attempts or clock() - started + wait >= policy.total_seconds:
            raise RemoteError(
                f"{settings.base_url}: gave up after {attempt} attempt(s): {last}", status=last.status
            ) from None
        logger.warning("attempt %d failed (%s); retrying in %.2fs", attempt, last, wait)
        yield Sleep(wait)


B = TypeVar("B", Batch, RerankBatch)


def sent_in_parts(
    settings: ClientSettings,
    batch: B,
    request: Callable[[B], httpx.Request],
    read: Callable[[Answer, bytes, B], T],
    join: Callable[[list[T]], T],
) -> Flow[T]:
    """One batch's result, retried; a batch refused for its size is resent in parts, depth first (in parts of
    the server's limit when it named one, else in halves) and the parts' results joined in order, and a
    single input still too large is the caller's InputError. /embed, /embed_sparse and /rerank all go so."""
    try:
        return (
            yield from retried(
                settings, lambda: request(batch), checked(settings, lambda a, b: read(a, b, batch), batch)
            )
        )
    except TooLarge as refusal:
        refused = refusal
    if len(batch.texts) == 1:
        raise InputError(
            f"texts[{batch.indices[0]}] is too large for the server even alone: {refused}", index=batch.indices[0]
        )
    count = len(batch.texts)
    step = refused.limit if refused.limit and refused.limit < count else math.ceil(count / 2)
    logger.info("server refused a batch of %d texts for its size; resending in parts of %d", count, step)
    parts = []
    for part in batch.split(step):
        parts.append((yield from sent_in_parts(settings, part, request, read, join)))
    return join(parts)


def embed_batch(
    settings: ClientSettings,
    batch: Batch,
    request: Callable[[Batch], httpx.Request],
    read: Callable[[Answer, bytes, Batch], np.ndarray],
) -> Flow[np.ndarray]:
    """One batch's raw vectors (`sent_in_parts`, the parts' rows stacked)."""
    return (yield from sent_in_parts(settings, batch, request, read, np.concatenate))


def concatenated(parts: list[list[T]]) -> list[T]:
    """The parts' items in order: how list results of a batch's parts are joined."""
    return [item for part in parts for item in part]


def health(request: httpx.Request) -> Flow[bool]:
    """One attempt, no retries: True when the server answers 200."""
    reply = yield request
    return isinstance(reply, Answer) and reply.body is not None and reply.response.status_code == 200
