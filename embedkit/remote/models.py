"""The client's data: what /info and /tokenize say, the inputs it accepts, and one batch on its way.

Nothing here sends anything. `validate_inputs` checks a call's inputs before any request: texts as
everywhere in embedkit (embedder.validate_texts), token-id lists as TEI reads them (u32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from embedkit.embedder import validate_text, validate_texts
from embedkit.errors import InputError

__all__ = [
    "MAX_TOKEN_ID",
    "Answer",
    "Batch",
    "Input",
    "Options",
    "RerankBatch",
    "RerankOptions",
    "ServerInfo",
    "Token",
    "validate_inputs",
]

MAX_TOKEN_ID = 2**32 - 1  # TEI reads token ids as u32
Input = str | list[int]  # a text, or one sequence of token ids (TEI's and OpenAI's token-array input)


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
    # the key of /info `model_type`: "embedding", "reranker" or "classifier"; None when the server does not say
    model_type: str | None = None


@dataclass(frozen=True)
class Token:
    """One token of `/tokenize`; `start`/`stop` are character offsets into the prompt-prefixed text."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


@dataclass(frozen=True)
class Options:
    """Per-request fields shared by every batch of one call (and of one task within it)."""

    prompt_name: str | None  # the server applies the task's prompt by name (embedkit serve)
    prefix: str  # or this client prepends it (never both)
    dimensions: int | None
    truncate: bool
    direction: str  # "left" | "right"


@dataclass
class Batch:
    """One request's inputs: all texts or all token-id lists (OpenAI's `input` takes one kind per request)."""

    indices: list[int]  # positions in the caller's list, so results land in input order
    texts: list[Input]
    options: Options

    def split(self, step: int) -> list[Batch]:
        """Consecutive parts of at most `step` inputs, in order."""
        return [
            Batch(self.indices[i : i + step], self.texts[i : i + step], self.options)
            for i in range(0, len(self.texts), step)
        ]


@dataclass(frozen=True)
class RerankOptions:
    """The fields every part of one rerank call sends beside its texts."""

    query: str
    top_n: int | None  # the caller's top_k: each part need only return its best top_k (/v1/rerank's top_n)
    return_documents: bool
    raw_scores: bool
    truncate: bool | None  # None: the server's default (TEI's --auto-truncate)
    direction: str | None  # "left" | "right"; None: the server's default


@dataclass
class RerankBatch:
    """One rerank request's documents and their positions in the caller's list."""

    indices: list[int]
    texts: list[str]
    options: RerankOptions

    def split(self, step: int) -> list[RerankBatch]:
        """Consecutive parts of at most `step` documents, in order."""
        return [
            RerankBatch(self.indices[i : i + step], self.texts[i : i + step], self.options)
            for i in range(0, len(self.texts), step)
        ]


@dataclass(frozen=True)
class Answer:
    """A server's answer as a shell hands it to a flow: the response, and its body read in full, or None
    when the body passed max_response_bytes (reading stopped there)."""

    response: httpx.Response
    body: bytes | None

    @property
    def where(self) -> str:
        """'POST /embed': how messages name the request."""
        return f"{self.response.request.method} {self.response.request.url.path}"


def validate_inputs(texts: Any) -> list[Input]:
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
