"""The Embedder contract every backend satisfies, and the one post-processing path.

Local models, the TEI client and the server all hand their raw pooled vectors to
`postprocess`, so Matryoshka truncation and L2 normalisation happen in exactly one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from embedkit.errors import InputError

__all__ = [
    "Embedder",
    "EmbedderBase",
    "SpanEmbedder",
    "check_dimensions",
    "check_embed_args",
    "check_encodable",
    "iter_windows",
    "postprocess",
    "validate_text",
    "validate_texts",
]


@runtime_checkable
class Embedder(Protocol):
    """What app code, the ingest pipeline and integrations may rely on."""

    @property
    def model_id(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_input_tokens(self) -> int: ...

    @property
    def tasks(self) -> list[str]: ...

    def embed(
        self,
        texts: Sequence[str],
        *,
        task: str | Sequence[str | None] | None = None,  # one task, or one per text
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool = True,
    ) -> np.ndarray: ...

    def embed_query(self, text: str, *, dimensions: int | None = None, normalize: bool = True) -> np.ndarray: ...

    def embed_documents(
        self, texts: Sequence[str], *, dimensions: int | None = None, normalize: bool = True
    ) -> np.ndarray: ...


@runtime_checkable
class SpanEmbedder(Protocol):
    """An embedder that pools spans of one pass over a whole document (late chunking): local models.

    Methods only, so `isinstance` never reads a property (a remote client's would ask its server).
    """

    def embed_spans(
        self,
        text: str,
        spans: Sequence[tuple[int, int]],
        *,
        task: str | None = "document",
        dimensions: int | None = None,
        normalize: bool = True,
    ) -> np.ndarray: ...


def validate_text(text: object, index: int) -> str:
    """Return `text` if it can be embedded, else raise InputError naming `texts[index]` (and `.index`).

    A non-str, an empty string, and a str that cannot be encoded as UTF-8 (a lone surrogate such as
    "\\ud800", which valid JSON may carry, e.g. half of a truncated emoji) are errors, the last naming the
    character position.
    """
    if not isinstance(text, str):
        raise InputError(f"texts[{index}] is {type(text).__name__}, expected str", index=index)
    if text == "":
        raise InputError(f"texts[{index}] is an empty string", index=index)
    check_encodable(text, f"texts[{index}]", index=index)
    return text


def check_encodable(text: str, where: str, *, index: int | None = None) -> None:
    """InputError naming `where` and the character position when `text` cannot be encoded as UTF-8.

    Tokenizers and JSON bodies need UTF-8; caught here, the error names the text instead of surfacing
    as a TypeError from inside the tokenizer, a failed request, or a lost batch of upserts.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{where} cannot be encoded as UTF-8: lone surrogate {text[exc.start]!r} at character {exc.start}",
            index=index,
        ) from None


def validate_texts(texts: Sequence[str]) -> list[str]:
    """Return `texts` as a list, or raise InputError naming the first bad entry (see `validate_text`).

    An empty list and empty strings are errors; whitespace-only text is valid and is embedded.
    """
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, not a single str; wrap it as [text]")
    if not isinstance(texts, Sequence):
        raise InputError(f"texts must be a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise InputError("texts is empty: pass at least one string")
    for index, text in enumerate(texts):
        validate_text(text, index)
    return list(texts)


def iter_windows(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of up to `size` texts drawn lazily from any iterable (a generator over
    millions of texts included), each text checked by `validate_text`, with its index counted over the
    whole stream (InputError names it). An empty stream yields nothing."""
    if isinstance(texts, str):
        raise InputError("texts must be an iterable of strings, not a single str; wrap it as [text]")
    if not isinstance(texts, Iterable):
        raise InputError(f"texts must be an iterable of strings, got {type(texts).__name__}")
    if size < 1:
        raise InputError(f"window size must be >= 1, got {size}")
    window: list[str] = []
    for index, text in enumerate(texts):
        window.append(validate_text(text, index))
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def check_dimensions(dimensions: int | None, full_dimension: int, allowed: Sequence[int] | None) -> None:
    """Raise InputError unless `dimensions` is a Matryoshka size this model can give."""
    if dimensions is None:
        return
    if isinstance(dimensions, bool) or not isinstance(dimensions, int):
        raise InputError(f"dimensions must be an int, got {type(dimensions).__name__}")
    if not 1 <= dimensions <= full_dimension:
        raise InputError(f"dimensions={dimensions} is out of range: this model gives 1..{full_dimension} dimensions")
    if allowed and dimensions not in allowed:
        sizes = ", ".join(str(size) for size in allowed)
        raise InputError(f"dimensions={dimensions} is not one of this model's Matryoshka sizes: {sizes}")


def check_embed_args(*, normalize: object, truncate: object = True, dimensions: object = None) -> None:
    """Raise InputError unless `normalize` and `truncate` are bools and `dimensions` is an int or None.

    Every embedder calls this first: `normalize="no"` is truthy and would silently normalise, and a
    `dimensions` of "8" or 8.0 must not depend on how far it travels before something indexes with it.
    """
    for name, value in (("normalize", normalize), ("truncate", truncate)):
        if not isinstance(value, bool):
            raise InputError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)):
        raise InputError(f"dimensions must be an int or None, got {type(dimensions).__name__} {dimensions!r}")


def postprocess(vectors: np.ndarray, *, dimensions: int | None = None, normalize: bool = True) -> np.ndarray:
    """Truncate to `dimensions` (Matryoshka), then L2-normalise if asked; float32, C-contiguous."""
    out = np.asarray(vectors, dtype=np.float32)
    if dimensions is not None:
        out = out[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        # the same epsilon as torch.nn.functional.normalize, which sentence-transformers uses
        out = out / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


class EmbedderBase:
    """Shared shortcuts on top of `embed`; backends implement `embed` (see Embedder) and the properties."""

    embed: Callable[..., np.ndarray]

    query_task: str = "query"
    document_task: str = "document"

    def embed_query(self, text: str, *, dimensions: int | None = None, normalize: bool = True) -> np.ndarray:
        """Embed one search query with the model's query task; returns a 1-D float32 vector."""
        if not isinstance(text, str):
            raise InputError(f"query must be a str, got {type(text).__name__}")
        return self.embed([text], task=self.query_task, dimensions=dimensions, normalize=normalize)[0]

    def embed_documents(
        self, texts: Sequence[str], *, dimensions: int | None = None, normalize: bool = True
    ) -> np.ndarray:
        """Embed passages to be searched with the model's document task."""
        return self.embed(texts, task=self.document_task, dimensions=dimensions, normalize=normalize)
