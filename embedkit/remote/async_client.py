"""AsyncTEIClient: the asyncio shell. It sends with httpx.AsyncClient (one connection pool per event loop),
sleeps with asyncio.sleep and bounds the requests in flight with a semaphore; everything else is
ClientBase's and flow.py's, so it does exactly what TEIClient does."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import numpy as np

from embedkit.embedder import iter_windows, validate_text
from embedkit.errors import InputError, RemoteError
from embedkit.remote.base import ClientBase, TaskArg
from embedkit.remote.flow import Flow, Reply, Sleep
from embedkit.remote.models import Answer, ServerInfo, Token
from embedkit.rerank.base import RerankResult
from embedkit.sparse.base import SparseVector

__all__ = ["AsyncTEIClient"]

T = TypeVar("T")


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


class AsyncTEIClient(ClientBase):
    """The asyncio twin of TEIClient: the same settings, methods and behaviour, awaitable.

    One client may serve any number of event loops, one after another (a script's or notebook's
    successive `asyncio.run` calls) or at once (threads each running a loop): httpx's connections belong
    to the loop that opened them, so each loop gets its own pool, made on its first request there and
    closed when that loop shuts down (asyncio.run does) or by `aclose()` on it. Building a client sends
    nothing. `from_client(TEIClient(...))` makes the async twin of a sync client, settings and all.
    Properties that need the server (`model_id`, `max_input_tokens`, `tasks`, `dimension`) cannot await:
    they answer once `await info()` (or `await probe_dimension()`) has run, and raise RemoteError before.
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

    # -- driving flows ---------------------------------------------------------------------------

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
        http = httpx.AsyncClient(timeout=self.settings.timeout, transport=self._transport)
        closer = _close_with_loop(http, owned=self._transport is None)
        await closer.__anext__()  # its first step registers it with the loop, which closes it at shutdown
        made = _LoopClient(http, asyncio.Lock(), closer)
        with self._loops_lock:
            current = self._loops.setdefault(loop, made)
        if current is not made:  # another task of this loop got there first
            await closer.aclose()
        return current

    async def _drive(self, flow: Flow[T], slots: asyncio.Semaphore | None = None) -> T:
        """Run `flow` to its end; `slots` bounds the requests in flight across the flows of one call."""
        reply: Reply = None
        while True:
            try:
                step = flow.send(reply)
            except StopIteration as done:
                return done.value
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                reply = None
            elif slots is None:
                reply = await self._exchange(step)
            else:
                async with slots:  # held while sending, not while backing off
                    reply = await self._exchange(step)

    async def _exchange(self, request: httpx.Request) -> Answer | httpx.TransportError:
        """Send `request` and read the body up to max_response_bytes (None past it)."""
        http = (await self._loop_client()).http
        cap = self.settings.max_response_bytes
        try:
            response = await http.send(request, stream=True)
            try:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > cap:
                        return Answer(response, None)
            finally:
                await response.aclose()
        except httpx.TransportError as error:
            return error
        return Answer(response, bytes(body))

    # -- server facts ----------------------------------------------------------------------------

    async def info(self) -> ServerInfo:
        """The server's /info, read once."""
        if self._info is not None:
            return self._info
        async with (await self._loop_client()).info_lock:
            if self._info is None:
                return await self._drive(self._info_flow())
        return self._info

    async def health(self) -> bool:
        """True when GET /health answers 200 (one attempt, no retries)."""
        return await self._drive(self._health_flow())

    @property
    def dimension(self) -> int:
        """The full vector width; known after the first embed (`await client.probe_dimension()` forces it)."""
        if self._dimension is None:
            raise RemoteError("the dimension is learned from the first answer: await probe_dimension() first")
        return self._dimension

    async def probe_dimension(self) -> int:
        """The full vector width; embeds one probe text if no answer has said it yet."""
        if self._dimension is None:
            await self.embed(["dimension probe"])
        if self._dimension is None:  # embed learns it, or raises
            raise RemoteError(f"{self.base_url} answered the probe embedding without a vector width")
        return self._dimension

    async def prompt_text(self, task: str | None = None) -> str:
        """The text each input of `task` is prefixed with (see TEIClient.prompt_text); reads /info once."""
        await self.info()
        return self._prompt_text(task)

    # -- the Embedder contract, awaitable --------------------------------------------------------

    async def embed(
        self,
        texts: Sequence[str] | Sequence[Sequence[int]],
        *,
        task: TaskArg = None,
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool = True,
        truncation_direction: str = "right",
    ) -> np.ndarray:
        """Embed `texts` (strings or token-id lists) -> float32 array (len(texts), dim), input order kept;
        see TEIClient.embed."""
        inputs = self._embed_inputs(texts, normalize=normalize, truncate=truncate, dimensions=dimensions)
        await self.info()
        batches = self._plan(
            inputs, task, dimensions=dimensions, normalize=normalize, truncate=truncate, direction=truncation_direction
        )
        slots = asyncio.Semaphore(self.max_concurrency)
        parts = await asyncio.gather(*(self._drive(self._embed_flow(batch), slots) for batch in batches))
        return self._assemble(len(inputs), batches, list(parts), normalize)

    async def embed_query(self, text: str, *, dimensions: int | None = None, normalize: bool = True) -> np.ndarray:
        """Embed one search query with `query_task`; a 1-D float32 vector."""
        if not isinstance(text, str):
            raise InputError(f"query must be a str, got {type(text).__name__}")
        return (await self.embed([text], task=self.query_task, dimensions=dimensions, normalize=normalize))[0]

    async def embed_documents(
        self, texts: Sequence[str], *, dimensions: int | None = None, normalize: bool = True
    ) -> np.ndarray:
        """Embed passages to be searched with `document_task`."""
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
        size = self._window_size(window)
        if not isinstance(texts, AsyncIterable):
            for part in iter_windows(texts, size):
                yield await self.embed(part, task=task, dimensions=dimensions, normalize=normalize, truncate=truncate)
            return
        window_texts: list[str] = []
        index = 0
        async for text in texts:
            # checked here, as iter_windows does, so an error names the text's place in the whole stream
            window_texts.append(validate_text(text, index))
            index += 1
            if len(window_texts) == size:
                yield await self.embed(
                    window_texts, task=task, dimensions=dimensions, normalize=normalize, truncate=truncate
                )
                window_texts = []
        if window_texts:
            yield await self.embed(
                window_texts, task=task, dimensions=dimensions, normalize=normalize, truncate=truncate
            )

    # -- tokens ----------------------------------------------------------------------------------

    async def embed_sparse(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str | None = None,
        truncate: bool = True,
        truncation_direction: str = "right",
    ) -> list[SparseVector]:
        """Sparse vectors of `texts` from the server's /embed_sparse (TEI's SPLADE route; `embedkit serve` of a
        SPLADE model), one SparseVector per text in input order. `prompt_name` is sent as it is ("query" runs
        an inference-free model's query route on `embedkit serve`); `truncate=False` makes a text past the
        server's limit an InputError. Batches of the server's `max_client_batch_size`, retried and split as
        `embed`'s. InputError before any request for bad texts or arguments (or api='openai')."""
        await self.info()
        batches = self._sparse_plan(texts, prompt_name, truncate, truncation_direction)
        slots = asyncio.Semaphore(self.max_concurrency)
        parts = await asyncio.gather(*(self._drive(self._sparse_flow(batch), slots) for batch in batches))
        return [vector for part in parts for vector in part]

    async def rerank(
        self,
        query: str,
        texts: Sequence[str],
        *,
        top_k: int | None = None,
        return_documents: bool = False,
        raw_scores: bool = False,
        truncate: bool | None = None,
        truncation_direction: str | None = None,
    ) -> list[RerankResult]:
        """`texts` ordered by relevance to `query`, best first, at most `top_k` of them, from the server's
        /rerank (TEI, `embedkit serve` of a reranker) or /v1/rerank (api='openai': vLLM, infinity).

        Each RerankResult has `index` (the text's position in `texts`), `score` (the model's activation,
        or its logit with `raw_scores=True`) and `document` (the text, with `return_documents=True`).
        The texts go in parts of the server's `max_client_batch_size` (and the request-body budget), retried
        and split as `embed`'s; the parts' results are merged by score (ties in input order) and cut to
        `top_k`. `truncate` / `truncation_direction` None leave the server's defaults. InputError before any
        request for an empty query or text list, a bad text or argument; RemoteError when /info says the
        server runs an embedding model (TEI itself answers 424 "model is not a re-ranker model")."""
        await self.info()
        batches = self._rerank_plan(
            query,
            texts,
            top_k=top_k,
            return_documents=return_documents,
            raw_scores=raw_scores,
            truncate=truncate,
            truncation_direction=truncation_direction,
        )
        slots = asyncio.Semaphore(self.max_concurrency)
        parts = await asyncio.gather(*(self._drive(self._rerank_flow(batch), slots) for batch in batches))
        return self._merge_ranks(list(parts), top_k)

    async def tokenize(
        self, texts: Sequence[str], *, task: str | None = None, add_special_tokens: bool = True
    ) -> list[list[Token]]:
        """The server's tokens for each text (with the task's prompt), offsets in characters."""
        checked = self._tokenize_inputs(texts)
        await self.info()
        return await self._drive(self._tokenize_flow(checked, task, add_special_tokens))

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Content tokens of each text, without special tokens or prompt (what the Chunker counts)."""
        return [len(tokens) for tokens in await self.tokenize(texts, add_special_tokens=False)]

    async def input_overhead(self, task: str | None = None) -> int:
        """Tokens a text costs beyond its own: special tokens plus the task's prompt."""
        with_everything = len((await self.tokenize(["x"], task=task))[0])
        return with_everything - len((await self.tokenize(["x"], add_special_tokens=False))[0])
