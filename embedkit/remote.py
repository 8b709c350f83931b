"""Remote embedding over HTTP: TEI's native API or the OpenAI-compatible one, sync and async.

`TEIClient` and `AsyncTEIClient` satisfy the Embedder contract of local models, so app code moves between
local and remote by changing one line. Every decision lives in `_ClientBase` and does no I/O: which route
and fields to send, how texts are cut into batches (the server's `max_client_batch_size` from /info and
a request-body budget), how a task becomes a `prompt_name` or a prefix, what an answer means (retry,
split, or a typed error), and whether the vectors in it can be trusted. The two shells only send, sleep
and run batches concurrently, with the same tenacity policy; the async one keeps a connection pool per
event loop, so one client serves successive `asyncio.run` calls. `from_client` makes either shell's twin of
the other with every setting. Inputs are texts or token-id lists (TEI's and OpenAI's token-array input).

Normalisation follows embedkit's one policy: /embed is always asked for raw vectors (`normalize: false`)
and `embedder.postprocess` normalises here, so `normalize=False` means the same locally and remotely.
The OpenAI route only gives unit vectors: `normalize=False` there is an InputError.

Reference: TEI's router/src/http/server.rs and types.rs (TEI 1.7 - 1.9.3), and the OpenAI embeddings API.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import json
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import httpx
import numpy as np
import tenacity

from embedkit.embedder import (
    EmbedderBase,
    check_dimensions,
    check_embed_args,
    iter_windows,
    postprocess,
    validate_text,
    validate_texts,
)
from embedkit.errors import AuthError, InputError, RemoteError
from embedkit.tasks import ALIASES, TaskTable, known_prompts

__all__ = ["TEIClient", "AsyncTEIClient", "RetryPolicy", "ServerInfo", "Token", "API_KEY_ENV", "DEFAULT_TIMEOUT"]

logger = logging.getLogger("embedkit.remote")

API_KEY_ENV = "EMBEDKIT_API_KEY"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
DEFAULT_MAX_CONCURRENCY = 4
# TEI's default --payload-limit is 2,000,000 bytes; staying under it avoids a 413 round trip
DEFAULT_MAX_REQUEST_BYTES = 1_500_000
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024
# TEI's default --max-client-batch-size, used when a server has no /info (OpenAI-style services)
FALLBACK_BATCH_SIZE = 32
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
_BATCH_SIZE_MESSAGE = re.compile(r"batch size (\d+) > maximum allowed batch size (\d+)")
_INPUT_INDEX = re.compile(r"inputs\[(\d+)\]")
MAX_TOKEN_ID = 2**32 - 1  # TEI reads token ids as u32

Api = Literal["tei", "openai"]
_Client = TypeVar("_Client", bound="_ClientBase")
Input = str | list[int]  # a text, or one sequence of token ids (TEI's and OpenAI's token-array input)


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying a batch: exponential backoff with jitter, bounded in attempts and time.

    Waits are `backoff * 2**n` seconds plus up to `backoff` of jitter, capped at `max_backoff`; a server's
    Retry-After replaces the computed wait, up to `max_retry_after`. No retry starts that would end
    after `total_seconds`.
    """

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    total_seconds: float = 120.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise InputError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        for name in ("backoff", "max_backoff", "max_retry_after", "total_seconds"):
            if getattr(self, name) < 0:
                raise InputError(f"RetryPolicy.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ServerInfo:
    """What a server's /info says, reduced to what the client acts on."""

    model_id: str
    served_model_name: str
    max_client_batch_size: int
    max_input_length: int | None
    prompts: dict[str, str] | None = None  # embedkit serve lists its task prompts; TEI does not
    adapters: tuple[str, ...] = ()  # tasks that select a LoRA adapter (embedkit serve)
    version: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Token:
    """One token of `/tokenize`; `start`/`stop` are character offsets into the prompt-prefixed text."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


@dataclass(frozen=True)
class _Options:
    """Per-request fields shared by every batch of one call."""

    prompt_name: str | None
    prefix: str
    dimensions: int | None
    truncate: bool
    direction: str


@dataclass
class _Batch:
    indices: list[int]  # positions in the caller's list, so results land in input order
    texts: list[Input]  # all texts or all token-id lists: OpenAI's `input` takes one kind per request
    options: _Options


class _Transient(Exception):
    """An attempt that may succeed if repeated: connection trouble, timeouts, 429, 502-504."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class _TooLarge(Exception):
    """The server refused the batch for its size (413, or TEI's 422 'batch size N > maximum M')."""

    def __init__(self, message: str, limit: int | None) -> None:
        super().__init__(message)
        self.limit = limit


class _ClientBase(EmbedderBase):
    """Everything the sync and async clients share; no I/O here."""

    # the model lives behind a server: its limit and prompts cost a request, so a Chunker reads them late
    remote: ClassVar[bool] = True

    def __init__(
        self,
        base_url: str,
        *,
        api: Api = "tei",
        model: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        batch_size: int | None = None,
        retry: RetryPolicy | None = None,
        prompts: Mapping[str, str] | None = None,
        max_input_tokens: int | None = None,
        encoding_format: Literal["float", "base64"] = "base64",
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        info: ServerInfo | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InputError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if api not in ("tei", "openai"):
            raise InputError(f"api must be 'tei' or 'openai', got {api!r}")
        if encoding_format not in ("float", "base64"):
            raise InputError(f"encoding_format must be 'float' or 'base64', got {encoding_format!r}")
        for name, value in (("max_concurrency", max_concurrency), ("max_request_bytes", max_request_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an int >= 1, got {value!r}")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise InputError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
        self.base_url = base_url.rstrip("/")
        self.api: Api = api
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy()
        self._model = model
        self._api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._batch_size = batch_size
        self._prompts = dict(prompts) if prompts is not None else None
        self._max_input_tokens = max_input_tokens
        self._encoding_format = encoding_format
        self._max_request_bytes = max_request_bytes
        self._max_response_bytes = max_response_bytes
        self._info: ServerInfo | None = info  # a ServerInfo already read (by a twin client) skips /info
        self._info_missing = False  # an OpenAI-style service without /info
        self._dimension: int | None = None

    def __repr__(self) -> str:
        # the key is a secret: say whether one is set, never what it is
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, api={self.api!r}, "
            f"max_concurrency={self.max_concurrency}, api_key={'set' if self._api_key else None})"
        )

    def _settings(self) -> dict[str, Any]:
        """Every constructor setting (but base_url and info) as this client holds it now: what a twin copies."""
        return {
            "api": self.api,
            "model": self._model,
            "api_key": self._api_key,
            "timeout": self._timeout,
            "max_concurrency": self.max_concurrency,
            "batch_size": self._batch_size,
            "retry": self.retry,
            "prompts": self._prompts,
            "max_input_tokens": self._max_input_tokens,
            "encoding_format": self._encoding_format,
            "max_request_bytes": self._max_request_bytes,
            "max_response_bytes": self._max_response_bytes,
        }

    @classmethod
    def from_client(cls: type[_Client], client: _ClientBase, *, transport: Any = None) -> _Client:
        """This class's twin of `client` (a TEIClient's async twin, or an AsyncTEIClient's sync one) with every
        setting: URL, api, model, API key, timeout, batch size, concurrency, retry policy, prompts, limits,
        encoding, query/document tasks, and the /info and dimension it has learned. `transport` is this
        class's httpx transport. No request is sent. InputError for anything but a TEIClient/AsyncTEIClient."""
        if not isinstance(client, _ClientBase):
            raise InputError(
                f"{cls.__name__}.from_client needs a TEIClient or an AsyncTEIClient, got {type(client).__name__}"
            )
        twin = cls(client.base_url, transport=transport, **client._settings())  # type: ignore[call-arg]
        # what `client` learned or was told beyond its settings, so the twin answers exactly as it does
        twin._api_key = client._api_key  # as resolved there: EMBEDKIT_API_KEY is not read a second time
        twin._info, twin._info_missing, twin._dimension = client._info, client._info_missing, client._dimension
        twin.query_task, twin.document_task = client.query_task, client.document_task
        return twin

    @property
    def counts_tokens(self) -> bool:
        """Whether the service can count tokens (TEI's /tokenize): an OpenAI-style one cannot. No request."""
        return self.api == "tei"

    # -- what /info taught us ------------------------------------------------------------------

    @property
    def server_info(self) -> ServerInfo | None:
        """The server's /info once read (None before the first request); `info=` for a twin client."""
        return self._info

    def _require_info(self) -> ServerInfo:
        if self._info is None:
            raise RemoteError("the server's /info was not read yet: call (or await) info() first")
        return self._info

    @property
    def model_id(self) -> str:
        return self._require_info().model_id

    @property
    def max_input_tokens(self) -> int:
        if self._max_input_tokens is not None:
            return self._max_input_tokens
        limit = self._require_info().max_input_length
        if limit is None:
            raise RemoteError(f"{self.base_url} does not say its input limit (no /info); pass max_input_tokens=")
        return limit

    @property
    def tasks(self) -> list[str]:
        table = self._task_table()
        return table.names if table is not None else []

    def _task_table(self) -> TaskTable | None:
        info = self._require_info()
        if self._prompts is not None:
            return TaskTable(self._prompts)
        if info.prompts is not None:
            return TaskTable(info.prompts, adapters=info.adapters)
        known = known_prompts(info.model_id) or known_prompts(self._model)
        return known.table() if known else None

    def _batch_limit(self) -> int:
        server = self._require_info().max_client_batch_size
        return min(server, self._batch_size) if self._batch_size else server

    # -- requests ------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _url(self, route: str) -> str:
        if self.api == "openai" and self.base_url.endswith("/v1"):
            # an OpenAI-style base URL already ends in /v1; TEI's other routes sit at the root
            return self.base_url + "/embeddings" if route == "/v1/embeddings" else self.base_url[:-3] + route
        return self.base_url + route

    def _info_request(self) -> httpx.Request:
        return httpx.Request("GET", self._url("/info"), headers=self._headers())

    def _embed_request(self, batch: _Batch) -> httpx.Request:
        options = batch.options
        texts = [options.prefix + text if isinstance(text, str) else text for text in batch.texts]
        if self.api == "tei":
            body: dict[str, Any] = {
                "inputs": texts,
                "normalize": False,  # raw vectors; embedkit's one policy normalises them here
                "truncate": options.truncate,
                "truncation_direction": options.direction.capitalize(),  # TEI <= 1.8 knows only Left/Right
            }
            if options.prompt_name is not None:
                body["prompt_name"] = options.prompt_name
            route = "/embed"
        else:
            body = {"input": texts, "model": self._openai_model(), "encoding_format": self._encoding_format}
            route = "/v1/embeddings"
        if options.dimensions is not None:
            body["dimensions"] = options.dimensions
        return httpx.Request("POST", self._url(route), json=body, headers=self._headers())

    def _tokenize_request(self, texts: list[str], options: _Options, add_special_tokens: bool) -> httpx.Request:
        body: dict[str, Any] = {"inputs": [options.prefix + text for text in texts]}
        body["add_special_tokens"] = add_special_tokens
        if options.prompt_name is not None:
            body["prompt_name"] = options.prompt_name
        return httpx.Request("POST", self._url("/tokenize"), json=body, headers=self._headers())

    def _openai_model(self) -> str:
        if self._model:
            return self._model
        if self._info is not None and not self._info_missing:
            return self._info.served_model_name
        raise InputError(f"{self.base_url} has no /info to name its model: pass model= for api='openai'")

    # -- planning ------------------------------------------------------------------------------

    def _options(
        self, task: str | None, dimensions: int | None, normalize: bool, truncate: bool, direction: str
    ) -> _Options:
        """Fields for one task's texts: a server prompt_name when the server knows the task's prompts,
        else the model's known prefix prepended here (never both)."""
        if dimensions is not None:
            check_dimensions(dimensions, self._dimension or dimensions, None)
        if not isinstance(truncate, bool):
            raise InputError(f"truncate must be a bool, got {type(truncate).__name__}")
        if not isinstance(direction, str) or direction.lower() not in ("left", "right"):
            raise InputError(f"truncation_direction must be 'left' or 'right', got {direction!r}")
        if self.api == "openai":
            if not normalize:
                raise InputError(
                    "normalize=False is not available on the OpenAI-compatible route: it only returns unit "
                    "vectors; use api='tei' (/embed) for raw vectors"
                )
            if not truncate or direction.lower() != "right":
                raise InputError("the OpenAI-compatible route cannot choose truncation; use api='tei'")
        info = self._require_info()
        if task is None:
            return _Options(None, "", dimensions, truncate, direction.lower())
        if not isinstance(task, str):
            raise InputError(f"task must be a task name or None, got {type(task).__name__}")
        table = self._task_table()
        if table is None:
            raise InputError(
                f"task={task!r}: the server lists no prompts and model {info.model_id!r} is not in embedkit's "
                "known-prompt table (embedkit.tasks.KNOWN_PROMPTS); pass prompts={...} to the client, or "
                "task=None with the prefix in the text"
            )
        name = table.resolve(task)  # UnknownTaskError lists the valid names
        # embedkit serve lists canonical names beside the model's own, so look through the aliases too
        adapter = next((n for n in (name, *ALIASES.get(task, ())) if n and n in table.adapters), None)
        if adapter and (self.api == "openai" or (self._prompts is None and not info.prompts)):
            raise InputError(
                f"task={task!r} selects the LoRA adapter {adapter!r}, which only a server that applies adapters "
                "can run (embedkit serve, through /embed with prompt_name); a prefix cannot reproduce it"
            )
        if self.api == "tei" and self._prompts is None and info.prompts is not None:
            return _Options(name or task, "", dimensions, truncate, direction.lower())
        return _Options(None, table.prefix(task), dimensions, truncate, direction.lower())

    def _plan(
        self,
        texts: list[Input],
        task: str | Sequence[str | None] | None,
        *,
        dimensions: int | None,
        normalize: bool,
        truncate: bool,
        direction: str,
    ) -> list[_Batch]:
        """Cut one call into batches: per task and kind of input (texts, token ids), at most the server's batch
        size and the byte budget."""
        if task is None or isinstance(task, str):
            tasks: list[str | None] = [task] * len(texts)
        elif isinstance(task, Sequence):
            tasks = list(task)
            if len(tasks) != len(texts):
                raise InputError(f"task has {len(tasks)} entries for {len(texts)} texts; give one per text or one name")
        else:
            raise InputError(f"task must be a task name, a list of them or None, got {type(task).__name__}")
        options = {
            name: self._options(name, dimensions, normalize, truncate, direction) for name in dict.fromkeys(tasks)
        }
        limit = self._batch_limit()
        batches: list[_Batch] = []
        for (name, chosen), ids in ((item, ids) for item in options.items() for ids in (False, True)):
            current: _Batch | None = None
            size = 0
            for index, text in enumerate(texts):
                if tasks[index] != name or isinstance(text, list) != ids:
                    continue
                if isinstance(text, list):
                    if chosen.prefix:
                        raise InputError(
                            f"texts[{index}] is token ids, but task={name!r} means prepending the prompt "
                            f"{chosen.prefix!r} as text here (the server applies no prompt by name); put the "
                            "prompt's ids in front of them yourself and pass task=None, or embed the text",
                            index=index,
                        )
                    cost = sum(len(str(token)) + 1 for token in text) + 2  # digits, commas, brackets
                else:
                    cost = len(text.encode()) + len(chosen.prefix.encode()) + 8  # quotes, comma, escapes
                if current is None or len(current.texts) >= limit or size + cost > self._max_request_bytes:
                    current = _Batch([], [], chosen)
                    batches.append(current)
                    size = 0
                current.indices.append(index)
                current.texts.append(text)
                size += cost
        return batches

    def prompt_text(self, task: str | None = None) -> str:
        """The text each input of `task` is prefixed with, by the server (prompt_name) or by this client;
        "" when none. What a Chunker counts with its own tokenizer beside the special tokens. Needs /info:
        TEIClient reads it; on an AsyncTEIClient, await info() first (else RemoteError)."""
        return self._prefix_text(self._options(task, None, True, True, "right"))

    def _prefix_text(self, options: _Options) -> str:
        if options.prompt_name is None:
            return options.prefix
        return (self._require_info().prompts or {}).get(options.prompt_name, "")

    def _halves(self, batch: _Batch, refusal: _TooLarge) -> list[_Batch]:
        """Smaller batches after a size refusal; a single text that is still too large is the caller's."""
        if len(batch.texts) == 1:
            raise InputError(
                f"texts[{batch.indices[0]}] is too large for the server even alone: {refusal}", index=batch.indices[0]
            )
        step = refusal.limit if refusal.limit and refusal.limit < len(batch.texts) else math.ceil(len(batch.texts) / 2)
        logger.info("server refused a batch of %d texts for its size; resending in parts of %d", len(batch.texts), step)
        return [
            _Batch(batch.indices[i : i + step], batch.texts[i : i + step], batch.options)
            for i in range(0, len(batch.texts), step)
        ]

    def _assemble(self, count: int, batches: list[_Batch], parts: list[np.ndarray], normalize: bool) -> np.ndarray:
        widths = {part.shape[1] for part in parts}
        if len(widths) != 1:
            raise RemoteError(f"{self.base_url} answered vectors of different widths in one call: {sorted(widths)}")
        out = np.empty((count, widths.pop()), dtype=np.float32)
        for batch, part in zip(batches, parts, strict=True):
            out[batch.indices] = part
        return postprocess(out, normalize=normalize)

    # -- answers -------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """A server's words, shortened, with our key removed should a hostile server echo it."""
        text = text.strip()[:500]
        return text.replace(self._api_key, "***") if self._api_key else text

    def _server_message(self, body: bytes) -> str:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return self._scrub(body.decode("utf-8", "replace"))
        if isinstance(data, dict):
            for key in ("error", "message"):
                value = data.get(key)
                if isinstance(value, dict):  # OpenAI itself nests {"error": {"message": ...}}
                    value = value.get("message")
                if isinstance(value, str):
                    return self._scrub(value)
        return self._scrub(body.decode("utf-8", "replace"))

    def _check(self, response: httpx.Response, body: bytes, batch: _Batch | None = None) -> None:
        """Raise what a non-2xx answer means: _Transient (retry), _TooLarge (split) or a typed error."""
        status = response.status_code
        if 200 <= status < 300:
            return
        where = f"{response.request.method} {response.request.url.path}"
        message = self._server_message(body) or response.reason_phrase
        if status in RETRYABLE_STATUS:
            raise _Transient(f"{where} answered {status}: {message}", status, _retry_after(response))
        if status in (401, 403):
            sent = (
                "an API key was sent" if self._api_key else f"no API key was given; pass api_key= or set {API_KEY_ENV}"
            )
            raise AuthError(f"{where} answered {status}: the server refused the credentials ({sent})", status=status)
        batch_size = _BATCH_SIZE_MESSAGE.search(message)
        if batch is not None and (status == 413 or (status == 422 and batch_size)):
            raise _TooLarge(f"{status}: {message}", int(batch_size.group(2)) if batch_size else None)
        if status in (400, 413, 422):
            index = None
            named = _INPUT_INDEX.search(message)
            if batch is not None and named and int(named.group(1)) < len(batch.indices):
                index = batch.indices[int(named.group(1))]
            elif batch is not None and len(batch.indices) == 1:
                index = batch.indices[0]
            where_text = f" (texts[{index}])" if index is not None else ""
            raise InputError(f"{where} refused the input{where_text}: {status} {message}", index=index)
        raise RemoteError(f"{where} answered {status}: {message}", status=status)

    def _read_info(self, response: httpx.Response, body: bytes) -> ServerInfo | None:
        if response.status_code == 404 and self.api == "openai":
            return None  # vLLM, infinity and OpenAI have no /info: fall back to the constructor's settings
        if response.status_code == 404:
            raise RemoteError(
                f"{self.base_url}/info is not found: is this a TEI server? for an OpenAI-style "
                "service use api='openai'",
                status=404,
            )
        self._check(response, body)
        data = _json(body, f"{self.base_url}/info")
        if not isinstance(data, dict) or not isinstance(data.get("model_id"), str):
            raise RemoteError(f"{self.base_url}/info is not TEI's info object (no model_id)")
        batch_size = data.get("max_client_batch_size")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise RemoteError(f"{self.base_url}/info has no usable max_client_batch_size: {batch_size!r}")
        max_input = data.get("max_input_length")
        prompts = data.get("prompts")
        if prompts is not None and not (
            isinstance(prompts, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items())
        ):
            raise RemoteError(f"{self.base_url}/info `prompts` is not a mapping of names to prompt texts")
        adapters = data.get("adapters") or ()
        return ServerInfo(
            model_id=data["model_id"],
            served_model_name=str(data.get("served_model_name") or data["model_id"]),
            max_client_batch_size=batch_size,
            max_input_length=max_input if isinstance(max_input, int) and max_input > 0 else None,
            prompts=prompts,
            adapters=tuple(str(name) for name in adapters),
            version=data.get("version"),
            raw=data,
        )

    def _fallback_info(self) -> ServerInfo:
        self._info_missing = True
        name = self._model or "unknown"
        return ServerInfo(name, name, self._batch_size or FALLBACK_BATCH_SIZE, None)

    def _read_vectors(self, response: httpx.Response, body: bytes, batch: _Batch) -> np.ndarray:
        """The batch's vectors, or RemoteError if the answer is not exactly one finite vector per text."""
        self._check(response, body, batch)
        where = f"{response.request.method} {response.request.url.path}"
        data = _json(body, where)
        if self.api == "openai":
            rows = _openai_rows(data, len(batch.texts), where)
        else:
            rows = data
        try:
            vectors = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError):
            raise RemoteError(f"{where} answered something other than a list of equal-length vectors") from None
        if vectors.ndim != 2 or vectors.shape[0] != len(batch.texts) or vectors.shape[1] == 0:
            raise RemoteError(
                f"{where} answered {vectors.shape[0] if vectors.ndim else 0} vectors of shape {vectors.shape[1:]} "
                f"for {len(batch.texts)} texts"
            )
        if not np.isfinite(vectors).all():
            bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
            raise RemoteError(f"{where} answered a vector with NaN or Inf values for texts[{batch.indices[bad]}]")
        wanted = batch.options.dimensions
        if wanted is not None and vectors.shape[1] != wanted:
            if vectors.shape[1] < wanted:
                raise RemoteError(f"{where} answered {vectors.shape[1]} dimensions where {wanted} were asked")
            vectors = vectors[:, :wanted]  # a server that ignores `dimensions`: truncating here is the same policy
        elif wanted is None:
            if self._dimension is not None and vectors.shape[1] != self._dimension:
                raise RemoteError(
                    f"{where} answered {vectors.shape[1]} dimensions; earlier answers had {self._dimension}"
                )
            self._dimension = vectors.shape[1]
        return vectors

    def _read_tokens(self, response: httpx.Response, body: bytes, texts: list[str], prefix: str) -> list[list[Token]]:
        self._check(response, body)
        where = f"{response.request.method} {response.request.url.path}"
        data = _json(body, where)
        if not isinstance(data, list) or len(data) != len(texts):
            raise RemoteError(
                f"{where} answered {len(data) if isinstance(data, list) else 'no'} token lists for {len(texts)} texts"
            )
        out = []
        for text, tokens in zip(texts, data, strict=True):
            full = prefix + text
            char_at = _byte_to_char(full)
            try:
                out.append(
                    [
                        Token(
                            int(t["id"]),
                            str(t["text"]),
                            bool(t["special"]),
                            None if t.get("start") is None else char_at[int(t["start"])],
                            None if t.get("stop") is None else char_at[int(t["stop"])],
                        )
                        for t in tokens
                    ]
                )
            except (KeyError, TypeError, ValueError, IndexError):
                raise RemoteError(
                    f"{where} answered tokens that are not TEI's shape or offsets past the text"
                ) from None
        return out

    # -- retrying ------------------------------------------------------------------------------

    def _retrying(self) -> dict[str, Any]:
        policy = self.retry
        rng = random.Random()

        def wait(state: tenacity.RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, _Transient) and error.retry_after is not None:
                return min(error.retry_after, policy.max_retry_after)
            exponential = policy.backoff * 2 ** (state.attempt_number - 1)
            return min(policy.max_backoff, exponential + rng.uniform(0, policy.backoff))

        def log(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            seconds = state.next_action.sleep if state.next_action else 0.0
            logger.warning("attempt %d failed (%s); retrying in %.2fs", state.attempt_number, error, seconds)

        return dict(
            stop=tenacity.stop_after_attempt(policy.attempts) | tenacity.stop_before_delay(policy.total_seconds),
            wait=wait,
            retry=tenacity.retry_if_exception_type(_Transient),
            before_sleep=log,
            reraise=False,
        )

    def _gave_up(self, error: tenacity.RetryError) -> RemoteError:
        last = error.last_attempt.exception()
        attempts = error.last_attempt.attempt_number
        status = getattr(last, "status", None)
        return RemoteError(f"{self.base_url}: gave up after {attempts} attempt(s): {last}", status=status)

    def _transport_failed(self, request: httpx.Request, error: httpx.TransportError) -> _Transient:
        kind = "timed out" if isinstance(error, httpx.TimeoutException) else "failed"
        return _Transient(
            f"{request.method} {request.url.path} {kind}: {type(error).__name__}: {self._scrub(str(error))}"
        )

    def _too_big(self, request: httpx.Request) -> RemoteError:
        return RemoteError(
            f"{request.method} {request.url.path}: the answer exceeded max_response_bytes={self._max_response_bytes}"
        )

    def _windows(self, window: int | None) -> int:
        return window or self._batch_limit() * self.max_concurrency * 4


def _validate_inputs(texts: Any) -> list[Input]:
    """`texts` as a list of strings and token-id lists, or InputError naming the first bad entry.

    Strings are checked as everywhere (validate_texts). A token-id input is a list, tuple or 1-D integer
    array of ints in 0..MAX_TOKEN_ID; a 2-D integer array is one such input per row. A flat list of ints is
    refused rather than read as one input (as TEI would): embed returns one row per entry of `texts`.
    """
    if isinstance(texts, np.ndarray) and texts.ndim == 2 and texts.dtype.kind in "iu":
        texts = list(texts)
    if isinstance(texts, (bytes, bytearray)):
        raise InputError("texts must be a list of strings or of token-id lists, not bytes")
    if not isinstance(texts, Sequence) or isinstance(texts, str) or all(isinstance(text, str) for text in texts):
        return list(validate_texts(texts))
    return [
        validate_text(text, index) if isinstance(text, str) else _token_ids(text, index)
        for index, text in enumerate(texts)
    ]


def _token_ids(item: object, index: int) -> list[int]:
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        raise InputError(
            f"texts[{index}] is an int: give token ids as one list per input, [[101, 7592, 102]], not [101, 7592, 102]",
            index=index,
        )
    if isinstance(item, np.ndarray) and item.ndim == 1 and item.dtype.kind in "iu":
        ids: list[Any] = item.tolist()
    elif isinstance(item, (list, tuple)):
        ids = list(item)
    else:
        raise InputError(f"texts[{index}] is {type(item).__name__}, expected a str or a list of token ids", index=index)
    if not ids:
        raise InputError(f"texts[{index}] is an empty token-id list", index=index)
    for position, token in enumerate(ids):
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
            raise InputError(
                f"texts[{index}][{position}] is {type(token).__name__} {token!r}: token ids are ints", index=index
            )
        if not 0 <= token <= MAX_TOKEN_ID:
            raise InputError(
                f"texts[{index}][{position}] is {token}: token ids are ints from 0 to {MAX_TOKEN_ID}", index=index
            )
    return [int(token) for token in ids]


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), None when absent or unreadable."""
    value = response.headers.get("retry-after")
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


def _json(body: bytes, where: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RemoteError(f"{where} answered invalid JSON ({len(body)} bytes)") from None


def _openai_rows(data: Any, count: int, where: str) -> list[Any]:
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list) or len(items) != count:
        got = len(items) if isinstance(items, list) else "no"
        raise RemoteError(f"{where} answered {got} embeddings for {count} texts")
    rows: list[Any] = [None] * count
    for position, item in enumerate(items):
        index = item.get("index", position) if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or rows[index] is not None:
            raise RemoteError(f"{where} answered data[{position}] with a missing, repeated or out-of-range index")
        embedding = item.get("embedding")
        if isinstance(embedding, str):
            try:
                raw = base64.b64decode(embedding, validate=True)
            except (binascii.Error, ValueError):
                raise RemoteError(f"{where} answered data[{position}].embedding that is not base64") from None
            if len(raw) % 4:
                raise RemoteError(f"{where} answered data[{position}].embedding that is not float32 bytes")
            embedding = np.frombuffer(raw, dtype="<f4")
        rows[index] = embedding
    return rows


def _byte_to_char(text: str) -> list[int]:
    """char_at[b] = the character index at UTF-8 byte offset b (and at len(bytes), len(text))."""
    char_at = [i for i, ch in enumerate(text) for _ in range(len(ch.encode()))]
    char_at.append(len(text))
    return char_at


def _read_capped(chunks: Iterable[bytes], cap: int) -> bytes | None:
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > cap:
            return None
    return bytes(body)


class TEIClient(_ClientBase):
    """An Embedder backed by a TEI server (or `embedkit serve`, vLLM, infinity, OpenAI: `api="openai"`).

    `embed` sends batches of at most the server's `max_client_batch_size` (or `batch_size`, if smaller),
    up to `max_concurrency` at once, and returns them in input order. Transient failures are retried per
    `retry` (connection errors, timeouts, 429, 502-504, honouring Retry-After); a batch the server finds
    too large is split; 400/413/422 for one text raise InputError with its index; 401/403 AuthError.
    The API key comes from `api_key` or the EMBEDKIT_API_KEY environment variable and is never shown.
    `transport` is httpx's seam (a MockTransport, a proxy transport). Building a client sends nothing:
    /info is read on the first call that needs it.
    """

    def __init__(self, base_url: str, *, transport: httpx.BaseTransport | None = None, **settings: Any) -> None:
        super().__init__(base_url, **settings)
        self._http = httpx.Client(timeout=self._timeout, transport=transport)
        # a client dropped without close() (e.g. inside a LangChain object) still releases its sockets
        weakref.finalize(self, self._http.close)

    def __enter__(self) -> TEIClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- I/O -----------------------------------------------------------------------------------

    def _exchange(self, request: httpx.Request) -> tuple[httpx.Response, bytes]:
        try:
            response = self._http.send(request, stream=True)
            try:
                body = _read_capped(response.iter_bytes(), self._max_response_bytes)
            finally:
                response.close()
        except httpx.TransportError as error:
            raise self._transport_failed(request, error) from None
        if body is None:
            raise self._too_big(request)
        return response, body

    def _retried(self, attempt: Any) -> Any:
        try:
            for state in tenacity.Retrying(**self._retrying()):
                with state:
                    return attempt()
        except tenacity.RetryError as error:
            raise self._gave_up(error) from None

    def info(self) -> ServerInfo:
        """The server's /info, read once."""
        if self._info is None:
            info = self._retried(lambda: self._read_info(*self._exchange(self._info_request())))
            self._info = info if info is not None else self._fallback_info()
        return self._info

    def health(self) -> bool:
        """True when GET /health answers 200 (one attempt, no retries)."""
        try:
            response, _ = self._exchange(httpx.Request("GET", self._url("/health")))
        except (_Transient, RemoteError):
            return False
        return response.status_code == 200

    def _embed_batch(self, batch: _Batch) -> np.ndarray:
        try:
            return self._retried(lambda: self._read_vectors(*self._exchange(self._embed_request(batch)), batch))
        except _TooLarge as refusal:
            return np.concatenate([self._embed_batch(part) for part in self._halves(batch, refusal)])

    # -- the Embedder contract -----------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.info().model_id

    @property
    def max_input_tokens(self) -> int:
        self.info()
        return super().max_input_tokens

    @property
    def tasks(self) -> list[str]:
        self.info()
        return super().tasks

    @property
    def dimension(self) -> int:
        """The full vector width, learned from one probe embedding the first time it is needed."""
        if self._dimension is None:
            self.embed(["dimension probe"])
        assert self._dimension is not None
        return self._dimension

    def embed(
        self,
        texts: Sequence[str] | Sequence[Sequence[int]],
        *,
        task: str | Sequence[str | None] | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool = True,
        truncation_direction: str = "right",
    ) -> np.ndarray:
        """Embed `texts` -> float32 array (len(texts), dim), input order kept; see LocalEmbedder.embed.

        An entry may also be one input's token ids, `[[101, 7592, 102], ...]` (a list, tuple or integer
        array of ints in 0..2**32-1), sent as TEI's and OpenAI's token-array input. TEI decodes them and
        tokenizes again, so they carry the model's special tokens themselves. A task prompt reaches ids
        only as a server-side prompt_name: a task whose prompt is prepended here is an InputError for
        them. InputError names the first bad entry (texts[i], or texts[i][j] for a bad id) before any request.
        """
        check_embed_args(normalize=normalize, truncate=truncate, dimensions=dimensions)
        texts = _validate_inputs(texts)
        self.info()
        batches = self._plan(
            texts, task, dimensions=dimensions, normalize=normalize, truncate=truncate, direction=truncation_direction
        )
        if len(batches) == 1 or self.max_concurrency == 1:
            parts = [self._embed_batch(batch) for batch in batches]
        else:
            with ThreadPoolExecutor(
                min(self.max_concurrency, len(batches)), thread_name_prefix="embedkit-remote"
            ) as pool:
                parts = list(pool.map(self._embed_batch, batches))
        return self._assemble(len(texts), batches, parts, normalize)

    def embed_iter(
        self,
        texts: Iterable[str],
        *,
        task: str | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool = True,
        window: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Embed a stream of any length in bounded memory: one array per window of texts, in order."""
        self.info()
        for part in iter_windows(texts, self._windows(window)):
            yield self.embed(part, task=task, dimensions=dimensions, normalize=normalize, truncate=truncate)

    def tokenize(
        self, texts: Sequence[str], *, task: str | None = None, add_special_tokens: bool = True
    ) -> list[list[Token]]:
        """The server's tokens for each text (with the task's prompt), offsets in characters."""
        if self.api != "tei":
            raise InputError(
                f"tokenize needs TEI's /tokenize route, which an api='openai' service ({self.base_url}) lacks; "
                "to chunk for it, count tokens with the model's tokenizer: Chunker(client, tokenizer="
                "tokenizers.Tokenizer.from_file('tokenizer.json')) or default_chunker(client, tokenizer=PATH) "
                "(CLI: --tokenizer PATH)"
            )
        texts = validate_texts(texts)
        self.info()
        options = self._options(task, None, True, True, "right")
        prefix = self._prefix_text(options)
        out: list[list[Token]] = []
        limit = self._batch_limit()
        for start in range(0, len(texts), limit):
            part = texts[start : start + limit]
            request = self._tokenize_request(part, options, add_special_tokens)
            out.extend(self._retried(lambda r=request, p=part: self._read_tokens(*self._exchange(r), p, prefix)))
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Content tokens of each text, without special tokens or prompt (what the Chunker counts)."""
        return [len(tokens) for tokens in self.tokenize(texts, add_special_tokens=False)]

    def input_overhead(self, task: str | None = None) -> int:
        """Tokens a text costs beyond its own: special tokens plus the task's prompt."""
        with_everything = len(self.tokenize(["x"], task=task)[0])
        return with_everything - len(self.tokenize(["x"], add_special_tokens=False)[0])

    def prompt_text(self, task: str | None = None) -> str:
        """The text each input of `task` is prefixed with (see _ClientBase.prompt_text); reads /info once."""
        self.info()
        return super().prompt_text(task)


@dataclass
class _LoopClient:
    """The connections one event loop may use, and what closes them when that loop shuts down."""

    http: httpx.AsyncClient
    info_lock: asyncio.Lock
    closer: AsyncGenerator[None, None]


async def _close_with_loop(http: httpx.AsyncClient, owned: bool) -> AsyncGenerator[None, None]:
    """Suspended for the life of its event loop. asyncio.run (any loop.shutdown_asyncgens()) closes it while
    the loop still runs, and so the connections opened there are closed on the loop that owns them; when the
    client is dropped first, the loop's finaliser closes them."""
    try:
        yield
    finally:
        if owned:  # a transport the caller gave is theirs, shared by every loop: aclose() closes it
            await http.aclose()


class AsyncTEIClient(_ClientBase):
    """The asyncio twin of TEIClient: the same settings and behaviour, awaitable methods.

    One client may serve any number of event loops, one after another (a script's or notebook's
    successive `asyncio.run` calls) or at once (threads each running a loop): httpx's connections belong
    to the loop that opened them, so each loop gets its own pool, made on its first request there and
    closed when that loop shuts down (asyncio.run does) or by `aclose()` on it. Building a client sends
    nothing. `from_client(TEIClient(...))` makes the async twin of a sync client, settings and all.
    """

    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None, **settings: Any) -> None:
        super().__init__(base_url, **settings)
        self._transport = transport
        # keyed weakly by loop: a loop that is gone takes its entry along
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = weakref.WeakKeyDictionary()
        self._loops_lock = threading.Lock()  # loops in other threads may use this client at the same time

    async def __aenter__(self) -> AsyncTEIClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections of the running event loop (a transport given to the client too); those of
        other loops close when their loop shuts down. The client stays usable: a later call reconnects."""
        with self._loops_lock:
            current = self._loops.pop(asyncio.get_running_loop(), None)
        if current is not None:
            await current.closer.aclose()  # closes the pool it made for this loop
        if self._transport is not None:
            await self._transport.aclose()

    # -- I/O -----------------------------------------------------------------------------------

    async def _loop_client(self) -> _LoopClient:
        """The running loop's connections, made on its first request (a pool used from another loop fails
        with 'Event loop is closed' or hangs)."""
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            current = self._loops.get(loop)
            for ended in [other for other in self._loops if other.is_closed()]:
                # its connections were closed at its shutdown, or (closed without shutdown_asyncgens()) can
                # no longer be: nothing runs on a closed loop
                del self._loops[ended]
        if current is not None:
            return current
        http = httpx.AsyncClient(timeout=self._timeout, transport=self._transport)
        closer = _close_with_loop(http, owned=self._transport is None)
        await closer.__anext__()  # its first step registers it with the loop, which closes it at shutdown
        made = _LoopClient(http, asyncio.Lock(), closer)
        with self._loops_lock:
            current = self._loops.setdefault(loop, made)
        if current is not made:  # another task of this loop got there first
            await closer.aclose()
        return current

    async def _exchange(self, request: httpx.Request) -> tuple[httpx.Response, bytes]:
        http = (await self._loop_client()).http
        try:
            response = await http.send(request, stream=True)
            try:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_response_bytes:
                        raise self._too_big(request)
            finally:
                await response.aclose()
        except httpx.TransportError as error:
            raise self._transport_failed(request, error) from None
        return response, bytes(body)

    async def _retried(self, attempt: Any) -> Any:
        try:
            async for state in tenacity.AsyncRetrying(**self._retrying()):
                with state:
                    return await attempt()
        except tenacity.RetryError as error:
            raise self._gave_up(error) from None

    async def info(self) -> ServerInfo:
        """The server's /info, read once."""
        if self._info is not None:
            return self._info
        async with (await self._loop_client()).info_lock:
            if self._info is None:

                async def attempt() -> ServerInfo | None:
                    return self._read_info(*await self._exchange(self._info_request()))

                info = await self._retried(attempt)
                self._info = info if info is not None else self._fallback_info()
        return self._info

    async def health(self) -> bool:
        """True when GET /health answers 200 (one attempt, no retries)."""
        try:
            response, _ = await self._exchange(httpx.Request("GET", self._url("/health")))
        except (_Transient, RemoteError):
            return False
        return response.status_code == 200

    async def _embed_batch(self, batch: _Batch, slots: asyncio.Semaphore) -> np.ndarray:
        async def attempt() -> np.ndarray:
            async with slots:
                response, body = await self._exchange(self._embed_request(batch))
            return self._read_vectors(response, body, batch)

        try:
            return await self._retried(attempt)
        except _TooLarge as refusal:
            parts = [await self._embed_batch(part, slots) for part in self._halves(batch, refusal)]
            return np.concatenate(parts)

    # -- the Embedder contract, awaitable ------------------------------------------------------

    @property
    def dimension(self) -> int:
        """The full vector width; known after the first embed (`await client.probe_dimension()` forces it)."""
        if self._dimension is None:
            raise RemoteError("the dimension is learned from the first answer: await probe_dimension() first")
        return self._dimension

    async def probe_dimension(self) -> int:
        if self._dimension is None:
            await self.embed(["dimension probe"])
        assert self._dimension is not None
        return self._dimension

    async def embed(  # type: ignore[override]
        self,
        texts: Sequence[str] | Sequence[Sequence[int]],
        *,
        task: str | Sequence[str | None] | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool = True,
        truncation_direction: str = "right",
    ) -> np.ndarray:
        """Embed `texts` (strings or token-id lists) -> float32 array (len(texts), dim), input order kept;
        see TEIClient.embed."""
        check_embed_args(normalize=normalize, truncate=truncate, dimensions=dimensions)
        texts = _validate_inputs(texts)
        await self.info()
        batches = self._plan(
            texts, task, dimensions=dimensions, normalize=normalize, truncate=truncate, direction=truncation_direction
        )
        slots = asyncio.Semaphore(self.max_concurrency)
        parts = await asyncio.gather(*(self._embed_batch(batch, slots) for batch in batches))
        return self._assemble(len(texts), batches, list(parts), normalize)

    async def embed_query(  # type: ignore[override]
        self, text: str, *, dimensions: int | None = None, normalize: bool = True
    ) -> np.ndarray:
        """Embed one search query with the query task; a 1-D float32 vector."""
        if not isinstance(text, str):
            raise InputError(f"query must be a str, got {type(text).__name__}")
        return (await self.embed([text], task=self.query_task, dimensions=dimensions, normalize=normalize))[0]

    async def embed_documents(  # type: ignore[override]
        self, texts: Sequence[str], *, dimensions: int | None = None, normalize: bool = True
    ) -> np.ndarray:
        """Embed passages to be searched with the document task."""
        return await self.embed(texts, task=self.document_task, dimensions=dimensions, normalize=normalize)

    async def embed_iter(
        self,
        texts: Iterable[str] | AsyncIterable[str],
        *,
        task: str | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool = True,
        window: int | None = None,
    ) -> AsyncIterator[np.ndarray]:
        """Embed a stream (sync or async iterable) in bounded memory: one array per window, in order."""
        await self.info()
        size = self._windows(window)
        if isinstance(texts, AsyncIterable):
            part: list[str] = []
            index = 0
            async for text in texts:
                # checked here, as iter_windows does, so an error names the text's place in the whole stream
                part.append(validate_text(text, index))
                index += 1
                if len(part) == size:
                    yield await self.embed(
                        part, task=task, dimensions=dimensions, normalize=normalize, truncate=truncate
                    )
                    part = []
            if part:
                yield await self.embed(part, task=task, dimensions=dimensions, normalize=normalize, truncate=truncate)
            return
        for window_texts in iter_windows(texts, size):
            yield await self.embed(
                window_texts, task=task, dimensions=dimensions, normalize=normalize, truncate=truncate
            )
