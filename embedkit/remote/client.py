"""TEIClient: the synchronous shell. It sends with httpx.Client, sleeps with time.sleep, and runs a call's
batches on up to `max_concurrency` threads; everything else is ClientBase's and flow.py's."""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import numpy as np

from embedkit.embedder import iter_windows
from embedkit.errors import InputError, RemoteError
from embedkit.remote.base import ClientBase, TaskArg
from embedkit.remote.flow import Flow, Reply, Sleep
from embedkit.remote.models import Answer, ServerInfo, Token
from embedkit.rerank.base import RerankResult
from embedkit.sparse.base import SparseVector

__all__ = ["TEIClient"]

T = TypeVar("T")


class TEIClient(ClientBase):
    """An Embedder backed by a TEI server (or `embedkit serve`, vLLM, infinity, OpenAI: `api="openai"`).

    `embed` sends batches of at most the server's `max_client_batch_size` (or `batch_size`, if smaller),
    up to `max_concurrency` at once, and returns them in input order. Transient failures are retried per
    `retry` (connection errors, timeouts, 429, 502-504, honouring Retry-After); a batch the server finds
    too large is split; 400/413/422 for one text raise InputError with its index; 401/403 AuthError.
    The API key comes from `api_key` or the EMBEDKIT_API_KEY environment variable and is never shown.
    Every setting is in `settings` (a frozen ClientSettings). `transport` is httpx's seam (a MockTransport,
    a proxy transport). Building a client sends nothing: /info is read on the first call that needs it.
    AsyncTEIClient has the same methods, awaitable.
    """

    def __init__(self, base_url: str, *, transport: httpx.BaseTransport | None = None, **settings: Any) -> None:
        super().__init__(base_url, **settings)
        # the timeout travels with each request (wire.py); this one only covers requests built elsewhere
        self._http = httpx.Client(timeout=self.settings.timeout, transport=transport)
        # a client dropped without close() (e.g. inside a LangChain object) still releases its sockets
        weakref.finalize(self, self._http.close)

    def __enter__(self) -> TEIClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- driving flows ---------------------------------------------------------------------------

    def _drive(self, flow: Flow[T]) -> T:
        reply: Reply = None
        while True:
            try:
                step = flow.send(reply)
            except StopIteration as done:
                return done.value
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                reply = None
            else:
                reply = self._exchange(step)

    def _exchange(self, request: httpx.Request) -> Answer | httpx.TransportError:
        """Send `request` and read the body up to max_response_bytes (None past it)."""
        cap = self.settings.max_response_bytes
        try:
            response = self._http.send(request, stream=True)
            try:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > cap:
                        return Answer(response, None)
            finally:
                response.close()
        except httpx.TransportError as error:
            return error
        return Answer(response, bytes(body))

    # -- server facts ----------------------------------------------------------------------------

    def info(self) -> ServerInfo:
        """The server's /info, read once."""
        if self._info is None:
            return self._drive(self._info_flow())
        return self._info

    def health(self) -> bool:
        """True when GET /health answers 200 (one attempt, no retries)."""
        return self._drive(self._health_flow())

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
        return self.probe_dimension()

    def probe_dimension(self) -> int:
        """The full vector width; embeds one probe text if no answer has said it yet."""
        if self._dimension is None:
            self.embed(["dimension probe"])
        if self._dimension is None:  # embed learns it, or raises
            raise RemoteError(f"{self.base_url} answered the probe embedding without a vector width")
        return self._dimension

    def prompt_text(self, task: str | None = None) -> str:
        """The text each input of `task` is prefixed with, by the server (prompt_name) or by this client;
        "" when none. What a Chunker counts with its own tokenizer beside the special tokens. Reads /info once."""
        self.info()
        return self._prompt_text(task)

    # -- the Embedder contract -------------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str] | Sequence[Sequence[int]],
        *,
        task: TaskArg = None,
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
        inputs = self._embed_inputs(texts, normalize=normalize, truncate=truncate, dimensions=dimensions)
        self.info()
        batches = self._plan(
            inputs, task, dimensions=dimensions, normalize=normalize, truncate=truncate, direction=truncation_direction
        )
        run = lambda batch: self._drive(self._embed_flow(batch))  # noqa: E731
        if len(batches) == 1 or self.max_concurrency == 1:
            parts = [run(batch) for batch in batches]
        else:
            workers = min(self.max_concurrency, len(batches))
            with ThreadPoolExecutor(workers, thread_name_prefix="embedkit-remote") as pool:
                parts = list(pool.map(run, batches))
        return self._assemble(len(inputs), batches, parts, normalize)

    def embed_query(self, text: str, *, dimensions: int | None = None, normalize: bool = True) -> np.ndarray:
        """Embed one search query with `query_task`; a 1-D float32 vector."""
        if not isinstance(text, str):
            raise InputError(f"query must be a str, got {type(text).__name__}")
        return self.embed([text], task=self.query_task, dimensions=dimensions, normalize=normalize)[0]

    def embed_documents(
        self, texts: Sequence[str], *, dimensions: int | None = None, normalize: bool = True
    ) -> np.ndarray:
        """Embed passages to be searched with `document_task`."""
        return self.embed(texts, task=self.document_task, dimensions=dimensions, normalize=normalize)

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
        for part in iter_windows(texts, self._window_size(window)):
            yield self.embed(part, task=task, dimensions=dimensions, normalize=normalize, truncate=truncate)

    def embed_sparse(
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
        self.info()
        batches = self._sparse_plan(texts, prompt_name, truncate, truncation_direction)
        return [vector for batch in batches for vector in self._drive(self._sparse_flow(batch))]

    # -- reranking -------------------------------------------------------------------------------

    def rerank(
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
        self.info()
        batches = self._rerank_plan(
            query,
            texts,
            top_k=top_k,
            return_documents=return_documents,
            raw_scores=raw_scores,
            truncate=truncate,
            truncation_direction=truncation_direction,
        )
        run = lambda batch: self._drive(self._rerank_flow(batch))  # noqa: E731
        if len(batches) == 1 or self.max_concurrency == 1:
            parts = [run(batch) for batch in batches]
        else:
            with ThreadPoolExecutor(
                min(self.max_concurrency, len(batches)), thread_name_prefix="embedkit-remote"
            ) as pool:
                parts = list(pool.map(run, batches))
        return self._merge_ranks(parts, top_k)

    # -- tokens ----------------------------------------------------------------------------------

    def tokenize(
        self, texts: Sequence[str], *, task: str | None = None, add_special_tokens: bool = True
    ) -> list[list[Token]]:
        """The server's tokens for each text (with the task's prompt), offsets in characters."""
        checked = self._tokenize_inputs(texts)
        self.info()
        return self._drive(self._tokenize_flow(checked, task, add_special_tokens))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Content tokens of each text, without special tokens or prompt (what the Chunker counts)."""
        return [len(tokens) for tokens in self.tokenize(texts, add_special_tokens=False)]

    def input_overhead(self, task: str | None = None) -> int:
        """Tokens a text costs beyond its own: special tokens plus the task's prompt."""
        with_everything = len(self.tokenize(["x"], task=task)[0])
        return with_everything - len(self.tokenize(["x"], add_special_tokens=False)[0])
