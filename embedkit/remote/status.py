"""What a server's status code means to the client: one table, one function that raises accordingly.

    status                       outcome   raised                     the flow then
    2xx                          -         nothing                    reads the body
    429, 502, 503, 504           RETRY     Transient (Retry-After)    waits and resends, within RetryPolicy
    413                          SPLIT     TooLarge                   resends the batch in parts
    422 "batch size N > maximum  SPLIT     TooLarge(limit=M)          resends in parts of M (TEI >= 1.9 answers
      allowed batch size M"                                           422 where older ones answer 413)
    401, 403                     AUTH      AuthError                  stops
    400, 422 (and 413 on a       INPUT     InputError(index=i)        stops; i from "inputs[i]" (or texts[i]),
      request that is no batch)                                       or the batch's only input
    anything else                FAIL      RemoteError(status=...)    stops

Transient and TooLarge never reach the caller: the flow turns them into a retry, a split, or (attempts
spent) a RemoteError. The server's words are quoted shortened, with the client's API key blanked.
"""

from __future__ import annotations

import email.utils
import enum
import json
import re
import time

import httpx

from embedkit.errors import AuthError, InputError, RemoteError
from embedkit.remote.models import Answer, Batch, RerankBatch
from embedkit.remote.settings import API_KEY_ENV

__all__ = ["STATUS_TABLE", "Outcome", "TooLarge", "Transient", "outcome", "raise_for_status", "retry_after", "scrub"]


class Outcome(enum.Enum):
    RETRY = "retry"
    SPLIT = "split"
    AUTH = "auth"
    INPUT = "input"
    FAIL = "fail"


STATUS_TABLE: dict[int, Outcome] = {
    400: Outcome.INPUT,
    401: Outcome.AUTH,
    403: Outcome.AUTH,
    413: Outcome.SPLIT,
    422: Outcome.INPUT,
    429: Outcome.RETRY,
    502: Outcome.RETRY,
    503: Outcome.RETRY,
    504: Outcome.RETRY,
}
BATCH_SIZE_MESSAGE = re.compile(r"batch size (\d+) > maximum allowed batch size (\d+)")
INPUT_INDEX = re.compile(r"(?:inputs|texts|documents)\[(\d+)\]")  # /embed's, /rerank's, /v1/rerank's field


class Transient(Exception):
    """An attempt that may succeed if repeated: connection trouble, timeouts, 429, 502-504."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class TooLarge(Exception):
    """The server refused the batch for its size (413, or TEI's 422 'batch size N > maximum M')."""

    def __init__(self, message: str, limit: int | None) -> None:
        super().__init__(message)
        self.limit = limit


def outcome(status: int, message: str) -> Outcome | None:
    """The table's row for `status` (None for 2xx); the one message-dependent row is TEI's batch-size 422."""
    if 200 <= status < 300:
        return None
    if status == 422 and BATCH_SIZE_MESSAGE.search(message):
        return Outcome.SPLIT
    return STATUS_TABLE.get(status, Outcome.FAIL)


def raise_for_status(
    answer: Answer, body: bytes, *, api_key: str | None, batch: Batch | RerankBatch | None = None
) -> None:
    """Raise what a non-2xx answer means (see the table above); `batch` is the request's inputs when it can
    be split and its errors mapped to the caller's indices (embed, rerank), None otherwise (info, tokenize)."""
    status = answer.response.status_code
    message = server_message(body, api_key) or answer.response.reason_phrase
    kind = outcome(status, message)
    if kind is None:
        return
    where = answer.where
    if kind is Outcome.RETRY:
        raise Transient(f"{where} answered {status}: {message}", status, retry_after(answer.response.headers))
    if kind is Outcome.AUTH:
        sent = "an API key was sent" if api_key else f"no API key was given; pass api_key= or set {API_KEY_ENV}"
        raise AuthError(f"{where} answered {status}: the server refused the credentials ({sent})", status=status)
    if kind is Outcome.SPLIT and batch is not None:
        limit = BATCH_SIZE_MESSAGE.search(message)
        raise TooLarge(f"{status}: {message}", int(limit.group(2)) if limit else None)
    if kind in (Outcome.INPUT, Outcome.SPLIT):
        index = None
        named = INPUT_INDEX.search(message)
        if batch is not None and named and int(named.group(1)) < len(batch.indices):
            index = batch.indices[int(named.group(1))]
        elif batch is not None and len(batch.indices) == 1:
            index = batch.indices[0]
        where_text = f" (texts[{index}])" if index is not None else ""
        raise InputError(f"{where} refused the input{where_text}: {status} {message}", index=index)
    raise RemoteError(f"{where} answered {status}: {message}", status=status)


def scrub(text: str, api_key: str | None) -> str:
    """A server's words, shortened, with our key removed should a hostile server echo it."""
    text = text.strip()[:500]
    return text.replace(api_key, "***") if api_key else text


def server_message(body: bytes, api_key: str | None) -> str:
    """The error text of a TEI ({"error": ...}) or OpenAI ({"error": {"message": ...}}) body, else the body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return scrub(body.decode("utf-8", "replace"), api_key)
    if isinstance(data, dict):
        for key in ("error", "message"):
            value = data.get(key)
            if isinstance(value, dict):  # OpenAI itself nests {"error": {"message": ...}}
                value = value.get("message")
            if isinstance(value, str):
                return scrub(value, api_key)
    return scrub(body.decode("utf-8", "replace"), api_key)


def retry_after(headers: httpx.Headers) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), None when absent or unreadable."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
