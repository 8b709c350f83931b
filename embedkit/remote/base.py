"""What TEIClient and AsyncTEIClient share: settings, what the server taught them, and every decision.

Nothing here does I/O. `ClientBase` turns a call into batches (the server's `max_client_batch_size`
from /info and a request-body budget), a task into a `prompt_name` or a prefix, and each request into a
flow (flow.py) that a shell drives; it keeps what the server has said (/info, the vector width) so that
later calls and twins act on it.

Normalisation follows embedkit's one policy: /embed is always asked for raw vectors (`normalize: false`)
and `embedder.postprocess` normalises here, so `normalize=False` means the same locally and remotely.
The OpenAI route only gives unit vectors: `normalize=False` there is an InputError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import httpx
import numpy as np

from embedkit.embedder import check_dimensions, check_embed_args, check_encodable, postprocess, validate_texts
from embedkit.errors import InputError, RemoteError
from embedkit.remote import wire
from embedkit.remote.flow import Flow, checked, concatenated, embed_batch, health, retried, sent_in_parts
from embedkit.remote.models import (
    Answer,
    Batch,
    Input,
    Options,
    RerankBatch,
    RerankOptions,
    ServerInfo,
    Token,
    validate_inputs,
)
from embedkit.remote.settings import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT,
    FALLBACK_BATCH_SIZE,
    Api,
    ClientSettings,
    RetryPolicy,
    api_key_from_env,
)
from embedkit.remote.status import raise_for_status
from embedkit.rerank.base import RerankResult
from embedkit.sparse.base import SparseVector
from embedkit.tasks import ALIASES, TaskTable, known_prompts

__all__ = ["ClientBase"]

_Client = TypeVar("_Client", bound="ClientBase")
TaskArg = str | Sequence[str | None] | None  # one task for every input, or one per input


class ClientBase:
    """Settings, learned server facts and the I/O-free half of every method of the two shells."""

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
        self.settings = ClientSettings(
            base_url,
            api=api,
            model=model,
            api_key=api_key if api_key is not None else api_key_from_env(),
            timeout=timeout,  # type: ignore[arg-type]  # ClientSettings makes it an httpx.Timeout
            max_concurrency=max_concurrency,
            batch_size=batch_size,
            retry=retry or RetryPolicy(),
            prompts=prompts,
            max_input_tokens=max_input_tokens,
            encoding_format=encoding_format,
            max_request_bytes=max_request_bytes,
            max_response_bytes=max_response_bytes,
        )
        # the tasks embed_query / embed_documents use (LangChain's wrapper and Chunker read them too)
        self.query_task: str | None = "query"
        self.document_task: str | None = "document"
        self._info: ServerInfo | None = info  # a ServerInfo already read (by a twin client) skips /info
        self._info_missing = False  # an OpenAI-style service without /info
        self._dimension: int | None = None

    # -- settings ------------------------------------------------------------------------------

    @property
    def settings(self) -> ClientSettings:
        """Every setting, frozen; assign a new one (dataclasses.replace) to change what the client does."""
        return self._settings

    @settings.setter
    def settings(self, value: ClientSettings) -> None:
        if not isinstance(value, ClientSettings):
            raise InputError(f"settings must be a ClientSettings, got {type(value).__name__}")
        self._settings = value

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    @property
    def api(self) -> Api:
        return self._settings.api

    @property
    def max_concurrency(self) -> int:
        return self._settings.max_concurrency

    @max_concurrency.setter
    def max_concurrency(self, value: int) -> None:
        self.settings = dataclasses.replace(self._settings, max_concurrency=value)

    @property
    def retry(self) -> RetryPolicy:
        return self._settings.retry

    @retry.setter
    def retry(self, value: RetryPolicy) -> None:
        self.settings = dataclasses.replace(self._settings, retry=value)

    def __repr__(self) -> str:
        # the key is a secret: say whether one is set, never what it is
        s = self._settings
        return (
            f"{type(self).__name__}(base_url={s.base_url!r}, api={s.api!r}, "
            f"max_concurrency={s.max_concurrency}, api_key={'set' if s.api_key else None})"
        )

    @classmethod
    def from_client(cls: type[_Client], client: ClientBase, *, transport: Any = None) -> _Client:
        """This class's twin of `client` (a TEIClient's async twin, or an AsyncTEIClient's sync one): the same
        `settings` object (URL, api, model, API key as resolved there, timeout, batch size, concurrency, retry
        policy, prompts, limits, encoding), the same query/document tasks, and the /info and dimension it has
        learned. `transport` is this class's httpx transport. No request is sent. InputError for anything but
        a TEIClient/AsyncTEIClient."""
        if not isinstance(client, ClientBase):
            raise InputError(
                f"{cls.__name__}.from_client needs a TEIClient or an AsyncTEIClient, got {type(client).__name__}"
            )
        twin = cls(client.base_url, transport=transport)  # type: ignore[call-arg]
        twin.settings = client.settings  # as resolved there: EMBEDKIT_API_KEY is not read a second time
        # what `client` learned or was told beyond its settings, so the twin answers exactly as it does
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
        if self._settings.max_input_tokens is not None:
            return self._settings.max_input_tokens
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
        if self._settings.prompts is not None:
            return TaskTable(dict(self._settings.prompts))
        if info.prompts is not None:
            return TaskTable(info.prompts, adapters=info.adapters)
        known = known_prompts(info.model_id) or known_prompts(self._settings.model)
        return known.table() if known else None

    def _batch_limit(self) -> int:
        server = self._require_info().max_client_batch_size
        size = self._settings.batch_size
        return min(server, size) if size else server

    def _window_size(self, window: int | None) -> int:
        """Texts per embed call of embed_iter: enough to keep every concurrent request full."""
        return window or self._batch_limit() * self.max_concurrency * 4

    # -- planning ------------------------------------------------------------------------------

    def _options(
        self, task: str | None, dimensions: int | None, normalize: bool, truncate: bool, direction: str
    ) -> Options:
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
            return Options(None, "", dimensions, truncate, direction.lower())
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
        own_prompts = self._settings.prompts is not None
        if adapter and (self.api == "openai" or (not own_prompts and not info.prompts)):
            raise InputError(
                f"task={task!r} selects the LoRA adapter {adapter!r}, which only a server that applies adapters "
                "can run (embedkit serve, through /embed with prompt_name); a prefix cannot reproduce it"
            )
        if self.api == "tei" and not own_prompts and info.prompts is not None:
            return Options(name or task, "", dimensions, truncate, direction.lower())
        return Options(None, table.prefix(task), dimensions, truncate, direction.lower())

    def _embed_inputs(self, texts: Any, *, normalize: object, truncate: object, dimensions: object) -> list[Input]:
        """A call's arguments checked before any request (InputError naming the first bad one)."""
        check_embed_args(normalize=normalize, truncate=truncate, dimensions=dimensions)
        return validate_inputs(texts)

    def _plan(
        self,
        texts: list[Input],
        task: TaskArg,
        *,
        dimensions: int | None,
        normalize: bool,
        truncate: bool,
        direction: str,
    ) -> list[Batch]:
        """Cut one call into batches: per task and kind of input (texts, token ids), at most the server's batch
        size and the byte budget."""
        self._require_model_type("embedding", "embed")
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
        limit, budget = self._batch_limit(), self._settings.max_request_bytes
        batches: list[Batch] = []
        for (name, chosen), ids in ((item, ids) for item in options.items() for ids in (False, True)):
            current: Batch | None = None
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
                if current is None or len(current.texts) >= limit or size + cost > budget:
                    current = Batch([], [], chosen)
                    batches.append(current)
                    size = 0
                current.indices.append(index)
                current.texts.append(text)
                size += cost
        return batches

    def _assemble(self, count: int, batches: list[Batch], parts: list[np.ndarray], normalize: bool) -> np.ndarray:
        """The call's (count, dim) float32 result in input order, through embedkit's one post-processing."""
        widths = {part.shape[1] for part in parts}
        if len(widths) != 1:
            raise RemoteError(f"{self.base_url} answered vectors of different widths in one call: {sorted(widths)}")
        out = np.empty((count, widths.pop()), dtype=np.float32)
        for batch, part in zip(batches, parts, strict=True):
            out[batch.indices] = part
        return postprocess(out, normalize=normalize)

    def _prompt_text(self, task: str | None) -> str:
        """The text each input of `task` is prefixed with, by the server (prompt_name) or by this client;
        "" when none. Needs /info."""
        options = self._options(task, None, True, True, "right")
        if options.prompt_name is None:
            return options.prefix
        return (self._require_info().prompts or {}).get(options.prompt_name, "")

    def _tokenize_inputs(self, texts: Sequence[str]) -> list[str]:
        if self.api != "tei":
            raise InputError(
                f"tokenize needs TEI's /tokenize route, which an api='openai' service ({self.base_url}) lacks; "
                "to chunk for it, count tokens with the model's tokenizer: Chunker(client, tokenizer="
                "tokenizers.Tokenizer.from_file('tokenizer.json')) or default_chunker(client, tokenizer=PATH) "
                "(CLI: --tokenizer PATH)"
            )
        return validate_texts(texts)

    def _sparse_plan(
        self, texts: Sequence[str], prompt_name: str | None, truncate: bool, direction: str
    ) -> list[Batch]:
        """embed_sparse's arguments checked (InputError before any request) and cut into batches of the
        server's size. Needs /info."""
        if self.api != "tei":
            raise InputError("embed_sparse needs TEI's /embed_sparse route, which an api='openai' service lacks")
        self._require_model_type("embedding", "embed_sparse")
        checked = validate_texts(texts)
        if not isinstance(truncate, bool):
            raise InputError(f"truncate must be a bool, got {type(truncate).__name__}")
        if not isinstance(direction, str) or direction.lower() not in ("left", "right"):
            raise InputError(f"truncation_direction must be 'left' or 'right', got {direction!r}")
        if prompt_name is not None and not isinstance(prompt_name, str):
            raise InputError(f"prompt_name must be a str or None, got {type(prompt_name).__name__}")
        whole = Batch(
            list(range(len(checked))), list(checked), Options(prompt_name, "", None, truncate, direction.lower())
        )
        return whole.split(self._batch_limit())

    def _require_model_type(self, wanted: str, call: str) -> None:
        """RemoteError before any request when /info says the server runs another kind of model (an embedder
        asked to rerank, a reranker asked to embed): TEI would answer 424 "model is not a re-ranker model"."""
        info = self._require_info()
        if info.model_type is None or info.model_type == wanted:
            return
        kinds = {"reranker": ("a reranker", "/rerank"), "embedding": ("an embedding model", "/embed")}
        served, route = kinds.get(info.model_type, (f"a {info.model_type} model", ""))
        raise RemoteError(
            f"{self.base_url} serves {info.model_id!r}, {served} (its /info model_type), not {kinds[wanted][0]}: "
            f"{call} cannot run there" + (f"; that server answers {route}" if route else "")
        )

    def _rerank_plan(
        self,
        query: object,
        texts: object,
        *,
        top_k: object,
        return_documents: object,
        raw_scores: object,
        truncate: object,
        truncation_direction: object,
    ) -> list[RerankBatch]:
        """rerank's arguments checked (InputError before any request, naming the bad one) and the documents cut
        into parts of the server's batch size and the request-body budget. Needs /info."""
        if not isinstance(query, str):
            raise InputError(f"query must be a str, got {type(query).__name__}")
        if not query.strip():
            raise InputError("query is empty: a reranker scores documents against a query")
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InputError(f"texts must be a list of strings, got {type(texts).__name__}")
        if len(texts) == 0:
            raise InputError("texts is empty: there is nothing to rerank")
        documents: list[str] = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"texts[{index}] is {type(text).__name__}, expected str", index=index)
            check_encodable(text, f"texts[{index}]", index=index)  # "" is a document as local rerank takes it
            documents.append(text)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise InputError(f"top_k must be a positive int or None, got {top_k!r}")
        if not isinstance(return_documents, bool):
            raise InputError(f"return_documents must be a bool, got {type(return_documents).__name__}")
        if not isinstance(raw_scores, bool):
            raise InputError(f"raw_scores must be a bool, got {type(raw_scores).__name__}")
        if truncate is not None and not isinstance(truncate, bool):
            raise InputError(f"truncate must be a bool or None, got {type(truncate).__name__}")
        direction = truncation_direction
        if direction is not None and (not isinstance(direction, str) or direction.lower() not in ("left", "right")):
            raise InputError(f"truncation_direction must be 'left', 'right' or None, got {direction!r}")
        if self.api == "openai" and (truncate is False or (direction is not None and direction.lower() != "right")):
            raise InputError("the /v1/rerank route cannot choose truncation; use api='tei' (/rerank)")
        self._require_model_type("reranker", "rerank")
        options = RerankOptions(
            query=query,
            top_n=top_k,
            return_documents=return_documents,
            raw_scores=raw_scores,
            truncate=truncate,
            direction=direction.lower() if direction is not None else None,
        )
        limit, budget = self._batch_limit(), self._settings.max_request_bytes - len(query.encode()) - 256
        batches: list[RerankBatch] = []
        current: RerankBatch | None = None
        size = 0
        for index, text in enumerate(documents):
            cost = len(text.encode()) + 8  # quotes, comma, escapes
            if current is None or len(current.texts) >= limit or size + cost > budget:
                current = RerankBatch([], [], options)
                batches.append(current)
                size = 0
            current.indices.append(index)
            current.texts.append(text)
            size += cost
        return batches

    @staticmethod
    def _merge_ranks(parts: list[list[RerankResult]], top_k: int | None) -> list[RerankResult]:
        """Every part's results as one ranking: by score, highest first, ties in the caller's order (as
        `order_results` ranks locally), cut to `top_k`."""
        merged = sorted((result for part in parts for result in part), key=lambda r: (-r.score, r.index))
        return merged[:top_k] if top_k is not None else merged

    # -- flows (flow.py), which the shells drive -----------------------------------------------

    def _rerank_flow(self, batch: RerankBatch) -> Flow[list[RerankResult]]:
        """One part's results from /rerank or /v1/rerank, retried; a part refused for its size (413, or TEI's
        422 "batch size N > maximum allowed batch size M") is resent in smaller parts, and a single document
        still too large is an InputError."""
        settings = self._settings
        model = self._openai_model() if self.api == "openai" else None
        return (
            yield from sent_in_parts(
                settings,
                batch,
                lambda part: wire.rerank_request(settings, part, model),
                lambda answer, body, part: wire.read_rerank(settings, answer, body, part),
                concatenated,
            )
        )

    def _sparse_flow(self, batch: Batch) -> Flow[list[SparseVector]]:
        """One batch's sparse vectors from /embed_sparse, retried; a batch refused for its size is resent in
        parts (as `flow.embed_batch` does for /embed), and a single text still too large is an InputError."""
        settings = self._settings
        return (
            yield from sent_in_parts(
                settings,
                batch,
                lambda part: wire.embed_sparse_request(settings, part),
                wire.read_sparse,
                concatenated,
            )
        )

    def _info_flow(self) -> Flow[ServerInfo]:
        """GET /info, retried; the answer is kept. An OpenAI-style service without /info (404) gets a stand-in
        from the settings (model name, batch size)."""
        settings = self._settings
        info = yield from retried(settings, lambda: wire.get_request(settings, "/info"), self._read_info)
        self._info = info if info is not None else self._fallback_info()
        return self._info

    def _read_info(self, answer: Answer, body: bytes) -> ServerInfo | None:
        if answer.response.status_code == 404 and self.api == "openai":
            return None  # vLLM, infinity and OpenAI have no /info: fall back to the constructor's settings
        if answer.response.status_code == 404:
            raise RemoteError(
                f"{self.base_url}/info is not found: is this a TEI server? for an OpenAI-style "
                "service use api='openai'",
                status=404,
            )
        raise_for_status(answer, body, api_key=self._settings.api_key)
        return wire.read_info(body, self.base_url)

    def _fallback_info(self) -> ServerInfo:
        self._info_missing = True
        name = self._settings.model or "unknown"
        return ServerInfo(name, name, self._settings.batch_size or FALLBACK_BATCH_SIZE, None)

    def _health_flow(self) -> Flow[bool]:
        return health(wire.get_request(self._settings, "/health"))

    def _embed_flow(self, batch: Batch) -> Flow[np.ndarray]:
        return embed_batch(self._settings, batch, self._embed_request, self._read_vectors)

    def _embed_request(self, batch: Batch) -> httpx.Request:
        return wire.embed_request(self._settings, batch, self._openai_model() if self.api == "openai" else None)

    def _openai_model(self) -> str:
        if self._settings.model:
            return self._settings.model
        if self._info is not None and not self._info_missing:
            return self._info.served_model_name
        raise InputError(f"{self.base_url} has no /info to name its model: pass model= for api='openai'")

    def _read_vectors(self, answer: Answer, body: bytes, batch: Batch) -> np.ndarray:
        """The batch's vectors at the asked width; the full width is learned from (and held to) the answers."""
        vectors = wire.read_vectors(self._settings, answer, body, batch)
        where, wanted = answer.where, batch.options.dimensions
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

    def _tokenize_flow(self, texts: list[str], task: str | None, add_special_tokens: bool) -> Flow[list[list[Token]]]:
        """/tokenize in batches of the server's size, each retried; offsets in characters of prompt + text."""
        options = self._options(task, None, True, True, "right")
        prefix = self._prompt_text(task)
        out: list[list[Token]] = []
        limit = self._batch_limit()
        for start in range(0, len(texts), limit):
            out.extend(
                (yield from self._tokenize_part(texts[start : start + limit], options, prefix, add_special_tokens))
            )
        return out

    def _tokenize_part(
        self, texts: list[str], options: Options, prefix: str, add_special_tokens: bool
    ) -> Flow[list[list[Token]]]:
        settings = self._settings
        request = wire.tokenize_request(settings, texts, options, add_special_tokens)

        def read(answer: Answer, body: bytes) -> list[list[Token]]:
            return wire.read_tokens(answer, body, texts, prefix)

        return retried(settings, lambda: request, checked(settings, read))
