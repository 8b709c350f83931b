"""Token-aware chunking with exact character spans, and late chunking.

A Chunker splits on structure first (markdown headings, blank-line paragraphs, lines, sentences, CJK
sentence ends, whitespace, and token boundaries as the last resort for one overlong word or text
without spaces), then packs neighbouring pieces up to the token budget of the model that will embed
them: its input limit minus its special tokens and the task prompt. Counts are the real tokenizer's:
planning uses one tokenisation of the whole document, and every chunk is checked exactly.

Every chunk satisfies `source[chunk.start:chunk.end] == chunk.text`; consecutive chunks share at most
`overlap_tokens` tokens of text; nothing but whitespace between pieces is ever left out.

Late chunking (`embed_chunks(..., late=True)`) runs the model over the whole document and mean-pools
the token states inside each chunk's span, so every chunk vector carries the document's context.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from embedkit.errors import InputError

__all__ = ["Chunk", "Chunker", "TokenCounter", "STRATEGIES", "default_chunker", "embed_chunks"]

Strategy = Literal["auto", "markdown", "text", "code"]
STRATEGIES = ("auto", "markdown", "text", "code")

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
_FENCE = re.compile(r"^(```|~~~)", re.M)
_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
_LINE = re.compile(r"\n\s*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_CJK_SENTENCE = re.compile(r"(?<=[。！？；])")  # no space follows a CJK sentence end
_WORD = re.compile(r"\s+")
_CODE_BLOCK = re.compile(
    r"\n(?=(?:async\s+def|def|class|function|fn|pub\s+fn|func|impl|struct|interface|export|public|private|"
    r"protected|static|const|let|var|module|package|import)\b)"
)

_LEVELS: dict[str, tuple[re.Pattern[str], ...]] = {
    "markdown": (_PARAGRAPH, _LINE, _SENTENCE, _CJK_SENTENCE, _WORD),
    "text": (_PARAGRAPH, _LINE, _SENTENCE, _CJK_SENTENCE, _WORD),
    "code": (_CODE_BLOCK, _PARAGRAPH, _LINE, _WORD),
}


@runtime_checkable
class TokenCounter(Protocol):
    """What a chunker needs from the embedder that will embed the chunks (local or remote)."""

    @property
    def max_input_tokens(self) -> int: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def input_overhead(self, task: str | None = None) -> int: ...


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # character offsets into the source: source[start:end] == text
    end: int
    index: int
    token_count: int  # tokens of `text` alone, without special tokens or prompt
    headings: tuple[str, ...] = ()  # markdown: the section path the chunk starts in, outermost first

    @property
    def metadata(self) -> dict[str, Any]:
        """Span, index, tokens and heading path, ready for a vector store payload."""
        return {
            "chunk_index": self.index,
            "start": self.start,
            "end": self.end,
            "token_count": self.token_count,
            "headings": list(self.headings),
        }


class _Tokens:
    """Counting and token spans through a fast tokenizer, or through an embedder's own methods."""

    def __init__(self, source: Any) -> None:
        tokenizer = getattr(source, "tokenizer", None) if not _is_tokenizer(source) else source
        tokenizer = getattr(tokenizer, "backend_tokenizer", tokenizer)  # a transformers fast tokenizer
        self._tokenizer = tokenizer if _is_tokenizer(tokenizer) else None
        self._source = source
        if self._tokenizer is None and not isinstance(source, TokenCounter):
            raise InputError(
                "Chunker needs a tokenizers.Tokenizer, a transformers fast tokenizer, or an embedkit embedder; "
                f"got {type(source).__name__}"
            )

    def count(self, texts: list[str]) -> list[int]:
        if self._tokenizer is not None:
            return [len(e.ids) for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]
        return list(self._source.count_tokens(texts))

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character span of each content token of `text`."""
        if self._tokenizer is not None:
            return list(self._tokenizer.encode(text, add_special_tokens=False).offsets)
        tokenize = getattr(self._source, "tokenize", None)
        if tokenize is None:
            raise InputError(f"{type(self._source).__name__} cannot report token offsets; give the Chunker a tokenizer")
        return [(t.start, t.stop) for t in tokenize([text], add_special_tokens=False)[0] if t.start is not None]

    def overhead(self, task: str | None) -> int:
        if self._tokenizer is not None:
            if isinstance(self._source, TokenCounter):
                return self._source.input_overhead(task)
            return len(self._tokenizer.encode("x").ids) - len(self._tokenizer.encode("x", add_special_tokens=False).ids)
        return self._source.input_overhead(task)


def _is_tokenizer(obj: Any) -> bool:
    return type(obj).__name__ == "Tokenizer" and hasattr(obj, "encode_batch") and hasattr(obj, "get_vocab_size")


class Chunker:
    """Split documents into chunks that fit `max_tokens` of the embedding model, prompt included.

    `tokenizer_or_embedder`: an embedkit embedder (local or TEIClient: its tokenizer, limit, special
    tokens and task prompt are used) or a tokenizer (then `max_tokens` is required). `overlap_tokens`
    of each chunk's end are repeated at the start of the next (whole words where the text has spaces).
    `strategy`: "markdown" (heading sections, then paragraphs ...), "text", "code" (top-level
    definitions first), or "auto" (markdown when the text has headings, else text).
    """

    def __init__(
        self,
        tokenizer_or_embedder: Any,
        max_tokens: int | None = None,
        *,
        overlap_tokens: int = 0,
        strategy: Strategy = "auto",
        task: str | None = "document",
    ) -> None:
        self._tokens = _Tokens(tokenizer_or_embedder)
        limit = getattr(tokenizer_or_embedder, "max_input_tokens", None)
        if max_tokens is None and limit is None:
            raise InputError("max_tokens is required when chunking with a tokenizer (no model limit to read)")
        max_tokens = limit if max_tokens is None else max_tokens
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InputError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        if limit is not None and max_tokens > limit:
            raise InputError(f"max_tokens={max_tokens} exceeds the model's input limit of {limit}")
        if strategy not in STRATEGIES:
            raise InputError(f"strategy={strategy!r}; choose one of {', '.join(STRATEGIES)}")
        self.max_tokens = max_tokens
        self.budget = max_tokens - self._tokens.overhead(task)
        if self.budget < 1:
            raise InputError(f"max_tokens={max_tokens} leaves no room for text after special tokens and the prompt")
        if isinstance(overlap_tokens, bool) or not isinstance(overlap_tokens, int) or overlap_tokens < 0:
            raise InputError(f"overlap_tokens must be an int >= 0, got {overlap_tokens!r}")
        if overlap_tokens >= self.budget:
            raise InputError(f"overlap_tokens={overlap_tokens} must be smaller than the chunk budget of {self.budget}")
        self.overlap_tokens = overlap_tokens
        self.strategy = strategy
        self.task = task

    @property
    def settings(self) -> dict[str, Any]:
        """What changes the chunks; part of each document's content hash."""
        return {
            "strategy": self.strategy,
            "max_tokens": self.max_tokens,
            "budget": self.budget,
            "overlap_tokens": self.overlap_tokens,
        }

    def split(self, text: str) -> list[Chunk]:
        """Chunks of `text` in order (deterministic); whitespace between chunks is dropped, nothing else."""
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        if not text.strip():
            return []
        plan = _Plan(text, self._tokens.spans(text))
        strategy = self.strategy
        if strategy == "auto":
            strategy = "markdown" if _HEADING.search(text) else "text"
        sections = _markdown_sections(text) if strategy == "markdown" else [(0, len(text), ())]
        chunks: list[Chunk] = []
        for start, end, headings in sections:
            pieces = self._pieces(plan, start, end, _LEVELS[strategy], 0)
            for chunk_start, chunk_end, count in self._pack(plan, pieces):
                chunks.append(Chunk(text[chunk_start:chunk_end], chunk_start, chunk_end, len(chunks), count, headings))
        return chunks

    # -- splitting ----------------------------------------------------------------------------

    def _pieces(
        self, plan: _Plan, start: int, end: int, levels: tuple[re.Pattern[str], ...], level: int
    ) -> list[tuple[int, int]]:
        """Spans of non-blank text within [start, end), each within the budget by the plan's count."""
        start, end = plan.strip(start, end)
        if start == end:
            return []
        if plan.count(start, end) <= self.budget:
            return [(start, end)]
        if level == len(levels):
            return self._token_pieces(plan, start, end)
        cuts = [m.span() for m in levels[level].finditer(plan.text, start, end)]
        cuts = [(a, b) for a, b in cuts if start < a or a < b]  # a zero-width cut at the start splits nothing
        if not cuts:
            return self._pieces(plan, start, end, levels, level + 1)
        spans, cursor = [], start
        for cut_start, cut_end in cuts:
            spans += self._pieces(plan, cursor, cut_start, levels, level + 1)
            cursor = cut_end
        return spans + self._pieces(plan, cursor, end, levels, level + 1)

    def _token_pieces(self, plan: _Plan, start: int, end: int) -> list[tuple[int, int]]:
        """The last resort for one overlong word or text without spaces: cut at token boundaries."""
        bounds = plan.token_starts(start, end)
        pieces, cursor = [], start
        for index in range(self.budget, len(bounds), self.budget):
            pieces.append((cursor, bounds[index]))
            cursor = bounds[index]
        pieces.append((cursor, end))
        return [span for a, b in pieces if (span := plan.strip(a, b))[0] < span[1]]

    # -- packing ------------------------------------------------------------------------------

    def _exact(self, plan: _Plan, start: int, end: int) -> int:
        return self._tokens.count([plan.text[start:end]])[0]

    def _pack(self, plan: _Plan, pieces: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """Greedy packing of neighbouring pieces; each chunk re-counted exactly and shrunk if needed."""
        out: list[tuple[int, int, int]] = []
        first = 0
        overlap_start: int | None = None
        while first < len(pieces):
            begin = pieces[first][0] if overlap_start is None else overlap_start
            last = first
            while last + 1 < len(pieces) and plan.count(begin, pieces[last + 1][1]) <= self.budget:
                last += 1
            while True:
                end = pieces[last][1]
                exact = self._exact(plan, begin, end)
                if exact <= self.budget:
                    break
                if overlap_start is not None and begin < pieces[first][0]:
                    begin = pieces[first][0]  # give up the overlap before giving up text
                elif last > first:
                    last -= 1
                else:  # one piece over budget after all (a joint tokenised differently): cut it by tokens
                    pieces[first : first + 1] = self._split_by_tokens(plan, pieces[first])
            out.append((begin, end, exact))
            first = last + 1
            overlap_start = self._overlap_start(plan, begin, end) if first < len(pieces) else None
        return out

    def _split_by_tokens(self, plan: _Plan, piece: tuple[int, int]) -> list[tuple[int, int]]:
        start, end = piece
        bounds = plan.token_starts(start, end)
        cut = bounds[len(bounds) // 2] if len(bounds) > 1 else (start + end) // 2
        halves = [span for span in (plan.strip(start, cut), plan.strip(cut, end)) if span[0] < span[1]]
        if len(halves) < 2:
            raise InputError(
                f"text[{start}:{end}] ({plan.text[start:end]!r}) alone takes more than the chunk budget of "
                f"{self.budget} tokens; raise max_tokens"
            )
        return halves

    def _overlap_start(self, plan: _Plan, start: int, end: int) -> int | None:
        """Where the next chunk starts so that it repeats at most `overlap_tokens` of [start, end)."""
        if not self.overlap_tokens:
            return None
        bounds = plan.token_starts(start, end)
        if len(bounds) <= 1:
            return None
        index = max(1, len(bounds) - self.overlap_tokens)  # never the whole previous chunk
        position = bounds[index]
        word = _WORD.search(plan.text, position, end)  # prefer a whole first word when the text has spaces
        if position > start and not plan.text[position - 1].isspace() and word is not None:
            position = word.end()
        if position >= end:
            return None
        while position < end and self._exact(plan, position, end) > self.overlap_tokens:
            following = plan.token_starts(position, end)
            if len(following) <= 1:
                return None
            position = following[1]
        position, _ = plan.strip(position, end)
        return position if position < end else None


DEFAULT_MAX_CHUNK_TOKENS = 512  # long-context models can take 8k tokens, but retrieval wants focused chunks


def default_chunker(
    embedder: TokenCounter,
    *,
    max_tokens: int | None = None,
    overlap_tokens: int | None = None,
    strategy: Strategy = "auto",
    task: str | None = "document",
) -> Chunker:
    """The Chunker ingest and the CLI use: chunks of min(model limit, 512) tokens, an eighth of them repeated."""
    size = max_tokens or min(embedder.max_input_tokens, DEFAULT_MAX_CHUNK_TOKENS)
    overlap = size // 8 if overlap_tokens is None else overlap_tokens
    return Chunker(embedder, size, overlap_tokens=overlap, strategy=strategy, task=task)


class _Plan:
    """One document with its tokenisation: approximate counts for any span by binary search."""

    def __init__(self, text: str, spans: list[tuple[int, int]]) -> None:
        self.text = text
        spans = [(a, b) for a, b in spans if b > a] or [(0, len(text))]
        self._starts = [a for a, _ in spans]
        self._ends = [b for _, b in spans]

    def count(self, start: int, end: int) -> int:
        """Tokens of the whole-document tokenisation that overlap [start, end)."""
        return max(0, bisect.bisect_left(self._starts, end) - bisect.bisect_right(self._ends, start))

    def token_starts(self, start: int, end: int) -> list[int]:
        """`start`, then the start of every later token inside (start, end)."""
        first = bisect.bisect_right(self._starts, start)
        last = bisect.bisect_left(self._starts, end)
        return [start, *self._starts[first:last]]

    def strip(self, start: int, end: int) -> tuple[int, int]:
        text = self.text
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        return start, end


def _markdown_sections(text: str) -> list[tuple[int, int, tuple[str, ...]]]:
    """(start, end, heading path) of each section; a heading line opens a section. Fenced code is skipped."""
    fenced: list[tuple[int, int]] = []
    opening: int | None = None
    for match in _FENCE.finditer(text):
        if opening is None:
            opening = match.start()
        else:
            fenced.append((opening, match.end()))
            opening = None
    if opening is not None:
        fenced.append((opening, len(text)))

    def in_fence(position: int) -> bool:
        return any(a <= position < b for a, b in fenced)

    sections: list[tuple[int, int, tuple[str, ...]]] = []
    path: list[tuple[int, str]] = []
    cursor = 0
    for match in _HEADING.finditer(text):
        if in_fence(match.start()):
            continue
        if match.start() > cursor:
            sections.append((cursor, match.start(), tuple(title for _, title in path)))
        level = len(match.group(1))
        path = [(lvl, title) for lvl, title in path if lvl < level] + [(level, match.group(2).strip())]
        cursor = match.start()
    sections.append((cursor, len(text), tuple(title for _, title in path)))
    return sections


def embed_chunks(
    embedder: Any,
    text: str,
    chunks: Sequence[Chunk],
    *,
    late: bool = False,
    task: str | None = "document",
    dimensions: int | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """One vector per chunk of `text`.

    `late=False` embeds each chunk's text on its own. `late=True` runs the model over the whole document
    (in overlapping windows beyond the model's limit) and mean-pools the token states inside each chunk's
    span, so a chunk's vector carries what the rest of the document says; mean-pooling local models only.
    """
    if not chunks:
        raise InputError("chunks is empty: nothing to embed")
    for index, chunk in enumerate(chunks):
        if text[chunk.start : chunk.end] != chunk.text:
            raise InputError(f"chunks[{index}] does not match the text at {chunk.start}:{chunk.end}")
    if not late:
        return embedder.embed([c.text for c in chunks], task=task, dimensions=dimensions, normalize=normalize)
    span_embed = getattr(embedder, "embed_spans", None)
    if span_embed is None:
        raise InputError(
            f"late chunking needs the model's token states, which {type(embedder).__name__} does not expose; "
            "use a local model (embedkit.load)"
        )
    spans = [(c.start, c.end) for c in chunks]
    return span_embed(text, spans, task=task, dimensions=dimensions, normalize=normalize)
