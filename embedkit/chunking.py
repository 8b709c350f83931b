"""Token-aware chunking with exact character spans.

Splits on structure first (blank-line paragraphs, lines, sentences, whitespace, then characters
for a single overlong word) and packs neighbouring pieces up to the token budget of the model that
will embed them: its input limit minus its special tokens and the task prompt.
Every chunk satisfies `source[chunk.start:chunk.end] == chunk.text`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from embedkit.errors import InputError

__all__ = ["Chunk", "Chunker", "TokenCounter"]

# separators tried in order: paragraphs, lines, sentence ends, any whitespace
_SEPARATORS = (
    re.compile(r"\n[ \t]*\n\s*"),
    re.compile(r"\n\s*"),
    re.compile(r"(?<=[.!?。！？])\s+"),
    re.compile(r"\s+"),
)


class TokenCounter(Protocol):
    """What a chunker needs from the embedder that will embed the chunks."""

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


class Chunker:
    """Split documents into chunks that fit `max_tokens` of the embedding model, prompt included."""

    def __init__(self, embedder: TokenCounter, max_tokens: int | None = None, *, task: str | None = "document") -> None:
        limit = embedder.max_input_tokens if max_tokens is None else max_tokens
        if limit > embedder.max_input_tokens:
            raise InputError(f"max_tokens={limit} exceeds the model's input limit of {embedder.max_input_tokens}")
        self.max_tokens = limit
        self.budget = limit - embedder.input_overhead(task)
        if self.budget < 1:
            raise InputError(f"max_tokens={limit} leaves no room for text after special tokens and the prompt")
        self._counter = embedder

    @property
    def settings(self) -> dict[str, Any]:
        """What changes the chunks; part of each document's content hash."""
        return {"strategy": "structure", "max_tokens": self.max_tokens, "budget": self.budget}

    def split(self, text: str) -> list[Chunk]:
        """Chunks of `text` in order; whitespace between chunks is dropped, nothing else."""
        spans = self._pieces(text, 0, len(text), 0)
        if not spans:
            return []
        counts = self._counter.count_tokens([text[s:e] for s, e in spans])
        chunks: list[Chunk] = []
        first = 0
        while first < len(spans):
            last, total = first, counts[first]
            while last + 1 < len(spans) and total + counts[last + 1] <= self.budget:
                last += 1
                total += counts[last]
            # the sum is an estimate (tokens may merge across a joint); check the real count
            while last > first:
                exact = self._counter.count_tokens([text[spans[first][0] : spans[last][1]]])[0]
                if exact <= self.budget:
                    total = exact
                    break
                last -= 1
            start, end = spans[first][0], spans[last][1]
            chunks.append(Chunk(text[start:end], start, end, len(chunks), total))
            first = last + 1
        return chunks

    def _pieces(self, text: str, start: int, end: int, level: int) -> list[tuple[int, int]]:
        """Spans of non-blank text within [start, end), each within the budget."""
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start == end:
            return []
        if self._counter.count_tokens([text[start:end]])[0] <= self.budget:
            return [(start, end)]
        if level < len(_SEPARATORS):
            cuts = [m.span() for m in _SEPARATORS[level].finditer(text, start, end)]
            if cuts:
                spans, cursor = [], start
                for cut_start, cut_end in cuts:
                    spans += self._pieces(text, cursor, cut_start, level + 1)
                    cursor = cut_end
                return spans + self._pieces(text, cursor, end, level + 1)
            return self._pieces(text, start, end, level + 1)
        middle = (start + end) // 2  # one overlong word: halve by characters until each half fits
        return self._pieces(text, start, middle, level) + self._pieces(text, middle, end, level)
