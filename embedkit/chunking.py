"""Token-aware chunking with exact character spans, and late chunking.

A Chunker splits on structure first (markdown or reStructuredText sections, blank-line paragraphs, lines,
sentences, CJK sentence ends, whitespace, and token boundaries as the last resort for one overlong word or
text without spaces), then packs neighbouring pieces up to the token budget of the model that will embed
them: its input limit minus its special tokens and the task prompt. Small neighbouring sections share a
chunk, and a heading never ends up alone in one. Counts are the real tokenizer's: planning uses a
tokenisation of the document in windows (one Encoding of a large document would take far more memory than
the text), and every chunk is checked exactly.

Every chunk satisfies `source[chunk.start:chunk.end] == chunk.text`; what is embedded is
`chunk.embedding_text`, the chunk's heading path (`chunk.context`) followed by its text, and that fits the
budget. Consecutive chunks share at most `overlap_tokens` tokens of text; nothing but whitespace between
pieces is ever left out.

Late chunking (`embed_chunks(..., late=True)`) runs the model over the whole document and mean-pools
the token states inside each chunk's span, so every chunk vector carries the document's context.
"""

from __future__ import annotations

import bisect
import inspect
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np

from embedkit.embedder import Embedder, SpanEmbedder
from embedkit.errors import InputError
from embedkit.local.tokenizer import as_tokenizer, load_tokenizer, plain_copy

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["STRATEGIES", "Chunk", "Chunker", "TokenCounter", "default_chunker", "embed_chunks"]

Strategy = Literal["auto", "markdown", "text", "code", "rst"]
STRATEGIES = ("auto", "markdown", "text", "code", "rst")

# \r? before each line end: CRLF files split exactly like LF ones (the \r stays inside the spans)
_HEADING = re.compile(r"^(#{1,6})[ \t]+(\S.*?)[ \t#]*\r?$", re.M)
_FENCE = re.compile(r"^(```|~~~)", re.M)
_RST_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1+[ \t]*\r?$", re.M)  # a row of one punctuation character
_UNENCODABLE = re.compile(r"[\ud800-\udfff]")  # lone surrogates: no UTF-8 form, tokenizers refuse them
_PARAGRAPH = re.compile(r"\r?\n[ \t]*\r?\n\s*")
_LINE = re.compile(r"\n\s*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_CJK_SENTENCE = re.compile(r"(?<=[。！？；])")  # noqa: RUF001 - CJK sentence ends (fullwidth), followed by no space
_WORD = re.compile(r"\s+")
_CODE_BLOCK = re.compile(
    r"\n(?=(?:async\s+def|def|class|function|fn|pub\s+fn|func|impl|struct|interface|export|public|private|"
    r"protected|static|const|let|var|module|package|import)\b)"
)

_LEVELS: dict[str, tuple[re.Pattern[str], ...]] = {
    "markdown": (_PARAGRAPH, _LINE, _SENTENCE, _CJK_SENTENCE, _WORD),
    "rst": (_PARAGRAPH, _LINE, _SENTENCE, _CJK_SENTENCE, _WORD),
    "text": (_PARAGRAPH, _LINE, _SENTENCE, _CJK_SENTENCE, _WORD),
    "code": (_CODE_BLOCK, _PARAGRAPH, _LINE, _WORD),
}
_WINDOW = 1 << 14  # characters tokenised at once for the plan: bounds the tokenizer's memory per document
_WINDOWS_PER_CALL = 4


@runtime_checkable
class TokenCounter(Protocol):
    """What a chunker needs from the embedder that will embed the chunks (local or remote)."""

    @property
    def max_input_tokens(self) -> int: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def input_overhead(self, task: str | None = None) -> int: ...


@dataclass(frozen=True)
class Chunk:
    """One span of a document and what is embedded for it.

    `text` is exactly `source[start:end]`. `headings` is the heading path (outermost first) of the section
    where the chunk's content starts: the section under its leading heading lines when it begins with some.
    `context` is that path as the embedding's prefix ("Guide > Install\\n\\n"), without the headings the text
    itself contains, and "" when there is nothing left or heading context is off. `token_count` counts
    `embedding_text`, without special tokens or prompt.
    """

    text: str
    start: int  # character offsets into the source: source[start:end] == text
    end: int
    index: int
    token_count: int  # tokens of `embedding_text` (context + text), without special tokens or prompt
    headings: tuple[str, ...] = ()
    context: str = ""

    @property
    def embedding_text(self) -> str:
        """What the model embeds for this chunk: the heading context, then the exact source text."""
        return self.context + self.text

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
    """Counting and token spans through a fast tokenizer, or through an embedder's own methods.

    `tokenizer` counts for an embedder that cannot (an OpenAI-style service has no /tokenize) or should
    not (a local tokenizer saves a round trip per count); the embedder still gives the model's limit and
    the task's prompt. Nothing here reads a limit or sends a request: a remote embedder answers on the
    Chunker's first split.
    """

    def __init__(self, source: Any, tokenizer: Any = None) -> None:
        self._source = source
        # a remote client reads its limit and prompts from the server: the Chunker asks on first use
        self.remote = getattr(type(source), "remote", False) is True
        if tokenizer is not None:
            if as_tokenizer(source) is not None:
                raise InputError(
                    "give the tokenizer once: Chunker(tokenizer, max_tokens) or Chunker(embedder, tokenizer=...)"
                )
            if not callable(getattr(type(source), "embed", None)):
                raise InputError(
                    f"Chunker(embedder, tokenizer=...) needs an embedkit embedder first, got {type(source).__name__}"
                )
            found: Tokenizer | None = load_tokenizer(tokenizer)
            self._explicit = True
        else:
            # a tokenizer itself, or the embedder's own (a local model has one; a remote client has none)
            found = as_tokenizer(source) or as_tokenizer(getattr(source, "tokenizer", None))
            self._explicit = False
        if found is not None and (found.padding or found.truncation):
            # a tokenizer.json often pads and truncates (all-MiniLM-L6-v2's to 128): counts would be wrong
            found = plain_copy(found)
        self._tokenizer = found
        if self._tokenizer is not None:
            return
        if not _counts_tokens(source):
            raise InputError(
                "Chunker needs a tokenizers.Tokenizer, a transformers fast tokenizer, or an embedkit embedder; "
                f"got {type(source).__name__}"
            )
        if getattr(source, "counts_tokens", True) is False:  # e.g. TEIClient(url, api="openai"): no /tokenize
            raise InputError(
                f"{source!r} cannot count tokens (the service has no /tokenize), and chunking needs counts: give "
                "the Chunker the model's tokenizer, Chunker(embedder, tokenizer=tokenizers.Tokenizer.from_file("
                "'tokenizer.json'), max_tokens=...) or default_chunker(embedder, tokenizer='path/to/tokenizer.json'"
                " or a model folder); on the command line, --tokenizer PATH"
            )

    def limit(self) -> int | None:
        """The model's input limit in tokens; None for a bare tokenizer (a remote client may ask its server)."""
        return getattr(self._source, "max_input_tokens", None)

    def count(self, texts: list[str]) -> list[int]:
        if self._tokenizer is not None:
            return [len(e.ids) for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]
        return list(self._source.count_tokens(texts))

    def spans(self, texts: list[str]) -> list[np.ndarray]:
        """Character spans of the content tokens of each text: an int64 array of shape (tokens, 2) each."""
        if self._tokenizer is not None:
            encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
            return [np.array(e.offsets, dtype=np.int64).reshape(-1, 2) for e in encodings]
        tokenize = getattr(self._source, "tokenize", None)
        if tokenize is None:
            raise InputError(f"{type(self._source).__name__} cannot report token offsets; give the Chunker a tokenizer")
        return [
            np.array([(t.start, t.stop) for t in tokens if t.start is not None], dtype=np.int64).reshape(-1, 2)
            for tokens in tokenize(texts, add_special_tokens=False)
        ]

    def overhead(self, task: str | None) -> int:
        """Tokens an input costs beyond its own text: special tokens plus the task's prompt."""
        if self._tokenizer is None:
            return self._source.input_overhead(task)
        prompt_text = getattr(self._source, "prompt_text", None)
        if self._explicit and callable(prompt_text):
            # a remote embedder knows its prompt as text; this tokenizer counts it as the model will
            prefix = prompt_text(task)
        elif _counts_tokens(self._source):
            return self._source.input_overhead(task)
        else:
            prefix = ""
        with_everything = len(self._tokenizer.encode(prefix + "x").ids)
        return with_everything - len(self._tokenizer.encode("x", add_special_tokens=False).ids)


def _counts_tokens(obj: Any) -> bool:
    """Whether `obj` can count tokens itself (an embedkit embedder): its type has the TokenCounter methods.

    Not isinstance(obj, TokenCounter): a runtime_checkable Protocol with properties evaluates them, and a
    remote client's `max_input_tokens` asks its server, so a mere check would send requests.
    """
    methods = [getattr(type(obj), name, None) for name in ("count_tokens", "input_overhead")]
    # an AsyncTEIClient has them as coroutines, which this synchronous chunker cannot call
    return all(callable(method) and not inspect.iscoroutinefunction(method) for method in methods)


@dataclass(frozen=True)
class _Sizing:
    """The sizes a caller asked for; what is None comes from the model's limit when it is first needed."""

    max_tokens: int | None
    overlap_tokens: int | None  # None: an eighth of max_tokens (default_chunker)
    cap: int | None = None  # default_chunker: at most this many tokens when max_tokens is None


class Chunker:
    """Split documents into chunks that fit `max_tokens` of the embedding model, prompt included.

    `tokenizer_or_embedder`: an embedkit embedder (local or TEIClient: its tokenizer, limit, special
    tokens and task prompt are used) or a tokenizer (then `max_tokens` is required). `tokenizer`, beside an
    embedder, counts tokens in its place (a tokenizers.Tokenizer, a transformers fast tokenizer, or the path
    of a tokenizer.json or a model folder): a service without /tokenize (TEIClient(url, api="openai"))
    needs one; the limit and the task's prompt still come from the embedder. A remote embedder's limit and
    prompt are read on the first split (or `budget`, `settings`), so building a Chunker sends no request;
    for a local one, size errors show at construction. `overlap_tokens`
    of each chunk's end are repeated at the start of the next (whole words where the text has spaces).
    `strategy`: "markdown" (ATX heading sections, then paragraphs ...), "rst" (reStructuredText section
    titles), "text", "code" (top-level definitions first), or "auto" (markdown when the text has an ATX
    heading, else text; `split(text, strategy=...)` can choose per document). `heading_context`: embed each
    sectioned chunk with its heading path in front (see `Chunk.context`); the budget counts it.

    Raises InputError for a max_tokens, overlap_tokens or strategy out of range, and for a remote embedder
    that cannot count tokens when no `tokenizer` is given (the message says how to give one).
    """

    def __init__(
        self,
        tokenizer_or_embedder: Any,
        max_tokens: int | None = None,
        *,
        overlap_tokens: int = 0,
        strategy: Strategy = "auto",
        task: str | None = "document",
        heading_context: bool = True,
        tokenizer: Any = None,
    ) -> None:
        sizing = _Sizing(max_tokens, overlap_tokens)
        self._setup(tokenizer_or_embedder, tokenizer, sizing, strategy, task, heading_context)

    def _setup(
        self, source: Any, tokenizer: Any, sizing: _Sizing, strategy: Any, task: str | None, heading_context: Any
    ) -> None:
        self._tokens = _Tokens(source, tokenizer)
        max_tokens, overlap_tokens = sizing.max_tokens, sizing.overlap_tokens
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise InputError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        if overlap_tokens is not None and (
            isinstance(overlap_tokens, bool) or not isinstance(overlap_tokens, int) or overlap_tokens < 0
        ):
            raise InputError(f"overlap_tokens must be an int >= 0, got {overlap_tokens!r}")
        if strategy not in STRATEGIES:
            raise InputError(f"strategy={strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if not isinstance(heading_context, bool):
            raise InputError(f"heading_context must be True or False, got {heading_context!r}")
        self.strategy = strategy
        self.task = task
        self.heading_context = heading_context
        self._sizing = sizing
        self._sized: tuple[int, int, int] | None = None  # (max_tokens, budget, overlap_tokens) once known
        if not self._tokens.remote:
            # a local model or a tokenizer answers without I/O: a size error shows here, not at the first split
            self._size()

    def _size(self) -> tuple[int, int, int]:
        """(max_tokens, budget, overlap_tokens), from the caller's sizes and the model's limit and prompt; read
        once, on first use for a remote embedder (its server answers), so building a Chunker sends nothing."""
        if self._sized is not None:
            return self._sized
        sizing = self._sizing
        limit = self._tokens.limit()
        if sizing.max_tokens is not None:
            max_tokens = sizing.max_tokens
        elif limit is None:
            raise InputError("max_tokens is required when chunking with a tokenizer (no model limit to read)")
        else:
            max_tokens = min(limit, sizing.cap) if sizing.cap is not None else limit
        if limit is not None and max_tokens > limit:
            raise InputError(f"max_tokens={max_tokens} exceeds the model's input limit of {limit}")
        budget = max_tokens - self._tokens.overhead(self.task)
        if budget < 1:
            raise InputError(f"max_tokens={max_tokens} leaves no room for text after special tokens and the prompt")
        overlap_tokens = max_tokens // 8 if sizing.overlap_tokens is None else sizing.overlap_tokens
        if overlap_tokens >= budget:
            raise InputError(f"overlap_tokens={overlap_tokens} must be smaller than the chunk budget of {budget}")
        self._sized = (max_tokens, budget, overlap_tokens)
        return self._sized

    @property
    def max_tokens(self) -> int:
        """Tokens a chunk may cost the model, special tokens and prompt included."""
        return self._size()[0]

    @property
    def budget(self) -> int:
        """Tokens left for a chunk's own text (heading context included) after special tokens and prompt."""
        return self._size()[1]

    @property
    def overlap_tokens(self) -> int:
        return self._size()[2]

    @property
    def settings(self) -> dict[str, Any]:
        """What changes the chunks; part of each document's content hash."""
        return {
            "strategy": self.strategy,
            "max_tokens": self.max_tokens,
            "budget": self.budget,
            "overlap_tokens": self.overlap_tokens,
            "heading_context": self.heading_context,
        }

    def split(self, text: str, *, strategy: Strategy | None = None) -> list[Chunk]:
        """Chunks of `text` in order (deterministic); whitespace between chunks is dropped, nothing else.

        `strategy` is this document's strategy when the chunker's own is "auto" (ingest passes "markdown" for
        .md, "rst" for .rst, "text" for .txt); a chunker built with any other strategy keeps its own.
        Raises InputError when `text` is not a str, `strategy` is unknown, or `text` holds a character no
        tokenizer takes (a lone surrogate, as JSON's "\\ud83d" of a cut emoji gives), naming its position.
        """
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        if strategy is not None and strategy not in STRATEGIES:
            raise InputError(f"strategy={strategy!r}; choose one of {', '.join(STRATEGIES)}")
        unencodable = _UNENCODABLE.search(text)
        if unencodable is not None:
            raise InputError(
                f"text[{unencodable.start()}] is {unencodable.group()!r}, a lone surrogate with no UTF-8 form that "
                "no tokenizer can take (often half of an emoji cut in JSON); remove or replace it"
            )
        if not text or text.isspace():
            return []
        chosen = self._strategy(text, strategy)
        plan = _Plan(text, self._tokens)
        whole = [_Unit(0, 0, len(text), len(text), ())]
        units = _units(plan, _SECTIONS[chosen](text)) if chosen in _SECTIONS else whole
        chunks: list[Chunk] = []
        for start, end, count, path, context in self._chunk_units(plan, units, _LEVELS[chosen]):
            headings = tuple(title for _, title in path)
            chunks.append(Chunk(text[start:end], start, end, len(chunks), count, headings, context))
        return chunks

    def _strategy(self, text: str, requested: Strategy | None) -> str:
        strategy = requested if self.strategy == "auto" and requested is not None else self.strategy
        if strategy == "auto":
            strategy = "markdown" if _HEADING.search(text) else "text"
        return strategy

    # -- sections -----------------------------------------------------------------------------

    def _chunk_units(self, plan: _Plan, units: list[_Unit], levels: tuple[re.Pattern[str], ...]) -> Iterator[_Planned]:
        """(start, end, tokens, heading path, context) of each chunk: runs of small units share a chunk, and
        a unit over the budget is split on its own (so a chunk holds either whole sections or part of one)."""
        first = 0
        while first < len(units):
            merged = self._merge(plan, units, first)
            if merged is None:
                yield from self._split_unit(plan, units[first], levels)
                first += 1
            else:
                first, chunk = merged
                yield chunk

    def _merge(self, plan: _Plan, units: list[_Unit], first: int) -> tuple[int, _Planned] | None:
        """(last, chunk) for the longest run units[first:last] that fits one chunk, greedily; None when
        units[first] alone does not fit."""
        unit = units[first]
        start = plan.strip(unit.start, unit.end)[0]
        context, context_tokens = self._context(plan, unit.path, start)
        room = self.budget - context_tokens
        last = first
        while last < len(units) and plan.count(start, units[last].end) <= room:
            last += 1
        while last > first:  # the plan's counts are approximate at joints: the exact count decides
            end = plan.strip(start, units[last - 1].end)[1]
            tokens = self._exact(plan, context, start, end)
            if tokens <= self.budget:
                return last, (start, end, tokens, unit.path, context)
            last -= 1
        return None

    def _split_unit(self, plan: _Plan, unit: _Unit, levels: tuple[re.Pattern[str], ...]) -> Iterator[_Planned]:
        """Chunks of one unit over the budget: its content in pieces, its heading lines joined to the first."""
        start, end = plan.strip(unit.start, unit.end)
        room = self.budget - max(self._context(plan, unit.path, at)[1] for at in (start, unit.body))
        pieces = self._pieces(plan, unit.body, unit.stop, levels, 0, room)
        heading = plan.count(start, unit.body)
        if pieces and room > heading and plan.count(start, pieces[0][1]) > room:  # room for the heading lines
            pieces[:1] = self._pieces(plan, *pieces[0], levels, 0, room - heading)
        if not pieces:  # a document of headings only
            pieces = [(start, end)]
        # a heading shares a chunk with what it heads; headings at the very end, with what comes before them
        pieces[0] = (start, pieces[0][1])
        pieces[-1] = (pieces[-1][0], end)
        for chunk_start, chunk_end, tokens, context in self._pack(plan, pieces, unit.path):
            yield chunk_start, chunk_end, tokens, unit.path, context

    def _context(self, plan: _Plan, path: _Path, start: int) -> tuple[str, int]:
        """The heading context of a chunk that starts at `start`, and its tokens: the titles of the path whose
        heading lines come before `start` (those inside the chunk are in its text already)."""
        titles = tuple(title for position, title in path if position < start) if self.heading_context else ()
        if not titles:
            return "", 0
        known = plan.contexts.get(titles)
        if known is None:
            context = " > ".join(titles) + "\n\n"
            tokens = self._tokens.count([context])[0]
            # a heading path that would crowd out the text is left out rather than cut
            known = plan.contexts[titles] = (context, tokens) if tokens <= self.budget // 2 else ("", 0)
        return known

    # -- splitting ----------------------------------------------------------------------------

    def _pieces(
        self, plan: _Plan, start: int, end: int, levels: tuple[re.Pattern[str], ...], level: int, budget: int
    ) -> list[tuple[int, int]]:
        """Spans of non-blank text within [start, end), each within `budget` by the plan's count."""
        start, end = plan.strip(start, end)
        if start == end:
            return []
        if plan.count(start, end) <= budget:
            return [(start, end)]
        if level == len(levels):
            return self._token_pieces(plan, start, end, budget)
        cuts = [m.span() for m in levels[level].finditer(plan.text, start, end)]
        cuts = [(a, b) for a, b in cuts if start < a or a < b]  # a zero-width cut at the start splits nothing
        if not cuts:
            return self._pieces(plan, start, end, levels, level + 1, budget)
        spans, cursor = [], start
        for cut_start, cut_end in cuts:
            spans += self._pieces(plan, cursor, cut_start, levels, level + 1, budget)
            cursor = cut_end
        return spans + self._pieces(plan, cursor, end, levels, level + 1, budget)

    def _token_pieces(self, plan: _Plan, start: int, end: int, budget: int) -> list[tuple[int, int]]:
        """The last resort for one overlong word or text without spaces: cut at token boundaries."""
        bounds = plan.token_starts(start, end)
        pieces, cursor = [], start
        for index in range(budget, len(bounds), budget):
            pieces.append((cursor, int(bounds[index])))
            cursor = int(bounds[index])
        pieces.append((cursor, end))
        return [span for a, b in pieces if (span := plan.strip(a, b))[0] < span[1]]

    # -- packing ------------------------------------------------------------------------------

    def _exact(self, plan: _Plan, context: str, start: int, end: int) -> int:
        return self._tokens.count([context + plan.text[start:end]])[0]

    def _pack(self, plan: _Plan, pieces: list[tuple[int, int]], path: _Path) -> list[tuple[int, int, int, str]]:
        """Greedy packing of neighbouring pieces into (start, end, tokens, context); each chunk re-counted
        exactly with its heading context and shrunk if needed."""
        out: list[tuple[int, int, int, str]] = []
        first = 0
        overlap_start: int | None = None
        while first < len(pieces):
            begin = pieces[first][0] if overlap_start is None else overlap_start
            # the same for any begin in this chunk's first piece: only the unit's first piece holds headings
            context, context_tokens = self._context(plan, path, begin)
            last = first
            while last + 1 < len(pieces) and plan.count(begin, pieces[last + 1][1]) <= self.budget - context_tokens:
                last += 1
            while True:
                end = pieces[last][1]
                exact = self._exact(plan, context, begin, end)
                if exact <= self.budget:
                    break
                if overlap_start is not None and begin < pieces[first][0]:
                    begin = pieces[first][0]  # give up the overlap before giving up text
                elif last > first:
                    last -= 1
                else:  # one piece over budget after all (a joint tokenised differently): cut it by tokens
                    pieces[first : first + 1] = self._split_by_tokens(plan, pieces[first])
            out.append((begin, end, exact, context))
            first = last + 1
            overlap_start = self._overlap_start(plan, begin, end) if first < len(pieces) else None
        return out

    def _split_by_tokens(self, plan: _Plan, piece: tuple[int, int]) -> list[tuple[int, int]]:
        start, end = piece
        bounds = plan.token_starts(start, end)
        cut = int(bounds[len(bounds) // 2]) if len(bounds) > 1 else (start + end) // 2
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
        position = int(bounds[index])
        word = _WORD.search(plan.text, position, end)  # prefer a whole first word when the text has spaces
        if position > start and not plan.text[position - 1].isspace() and word is not None:
            position = word.end()
        if position >= end:
            return None
        while position < end and self._exact(plan, "", position, end) > self.overlap_tokens:
            following = plan.token_starts(position, end)
            if len(following) <= 1:
                return None
            position = int(following[1])
        position, _ = plan.strip(position, end)
        return position if position < end else None


DEFAULT_MAX_CHUNK_TOKENS = 512  # long-context models can take 8k tokens, but retrieval wants focused chunks


def default_chunker(
    embedder: Embedder | TokenCounter,
    tokenizer: Any = None,
    *,
    max_tokens: int | None = None,
    overlap_tokens: int | None = None,
    strategy: Strategy = "auto",
    task: str | None = "document",
    heading_context: bool = True,
) -> Chunker:
    """The Chunker ingest and the CLI use: chunks of min(model limit, 512) tokens, an eighth of them repeated.

    `tokenizer` counts tokens instead of the embedder: a tokenizers.Tokenizer, a transformers fast tokenizer,
    or the path of a tokenizer.json or of a model folder holding one (the CLI's --tokenizer PATH). A service
    without /tokenize (TEIClient(url, api="openai")) needs one. The limit and the task's prompt still come
    from `embedder`; a remote one is asked on the first split, so building the chunker sends no request.
    Without `tokenizer`, `embedder` must count tokens itself (a TokenCounter, as embedkit's embedders are).

    Raises InputError (from Chunker) when nothing can count tokens (no `tokenizer`, and an embedder without
    count_tokens/input_overhead or a service without /tokenize), and for max_tokens < 1 or a negative
    overlap_tokens: None, not 0, means the default; InputError for a tokenizer path that does not exist,
    ModelLoadError for one that is not a tokenizer.json.
    """
    sizing = _Sizing(max_tokens, overlap_tokens, cap=DEFAULT_MAX_CHUNK_TOKENS)
    chunker = Chunker.__new__(Chunker)
    chunker._setup(embedder, tokenizer, sizing, strategy, task, heading_context)
    return chunker


class _Plan:
    """One document with its tokens' character spans: approximate counts for any span by binary search.

    The text is tokenised in windows of about _WINDOW characters cut after a line break or a space: one
    Encoding of a whole document holds token strings, ids, masks and offsets, tens of bytes per token
    (1.2 GB for 8 MB of markdown). A token cut by a window's edge only makes the counts approximate
    there; every chunk is counted exactly anyway. Spans live in two int32 arrays, 8 bytes per token.
    """

    def __init__(self, text: str, tokens: _Tokens) -> None:
        self.text = text
        self.contexts: dict[tuple[str, ...], tuple[str, int]] = {}  # heading contexts counted in this document
        dtype = np.int32 if len(text) < 2**31 else np.int64
        starts, ends = [], []
        windows = list(_windows(text, _WINDOW))
        for first in range(0, len(windows), _WINDOWS_PER_CALL):
            batch = windows[first : first + _WINDOWS_PER_CALL]
            for (offset, _), spans in zip(batch, tokens.spans([text[a:b] for a, b in batch]), strict=True):
                spans = spans[spans[:, 1] > spans[:, 0]] + offset  # (tokens, 2); empty spans count nothing
                starts.append(spans[:, 0].astype(dtype))
                ends.append(spans[:, 1].astype(dtype))
        self._starts = np.concatenate(starts) if starts else np.zeros(0, dtype)
        self._ends = np.concatenate(ends) if ends else np.zeros(0, dtype)
        if not len(self._starts):
            self._starts, self._ends = np.array([0], dtype), np.array([len(text)], dtype)

    def count(self, start: int, end: int) -> int:
        """Tokens of the document's tokenisation that overlap [start, end)."""
        # keys of the arrays' own dtype: a Python int would make numpy cast the whole array on every search
        key = self._starts.dtype.type
        return max(0, int(self._starts.searchsorted(key(end))) - int(self._ends.searchsorted(key(start), "right")))

    def token_starts(self, start: int, end: int) -> np.ndarray:
        """`start`, then the start of every later token inside (start, end): shape (tokens,)."""
        key = self._starts.dtype.type
        first, last = int(self._starts.searchsorted(key(start), "right")), int(self._starts.searchsorted(key(end)))
        return np.concatenate((np.array([start], self._starts.dtype), self._starts[first:last]))

    def strip(self, start: int, end: int) -> tuple[int, int]:
        text = self.text
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        return start, end


def _windows(text: str, size: int) -> Iterator[tuple[int, int]]:
    """[start, end) spans covering `text`, about `size` characters each, cut after a line break or else a space
    in their second half (where neither exists, as in long CJK runs, after exactly `size` characters)."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind("\n", start + size // 2, end)
            cut = text.rfind(" ", start + size // 2, end) if cut < 0 else cut
            end = end if cut < 0 else cut + 1
        yield start, end
        start = end


_Path = tuple[tuple[int, str], ...]  # (heading line position, title) from the outermost heading down
_Planned = tuple[int, int, int, _Path, str]  # a chunk: start, end, tokens, heading path, context


class _Section(NamedTuple):
    start: int  # its heading line (0 for the text before the first heading)
    body: int  # where the text under its heading line starts
    end: int
    path: _Path


class _Unit(NamedTuple):
    """A section with content and the heading-only sections just before it: never split apart."""

    start: int  # its first heading line
    body: int  # where its content starts
    stop: int  # where its content ends
    end: int  # past headings with nothing under them at the very end of the document
    path: _Path  # the heading path of its content


def _units(plan: _Plan, sections: list[_Section]) -> list[_Unit]:
    """Sections with content; a heading-only section joins the next one (at the very end, the one before)."""
    units: list[_Unit] = []
    waiting: int | None = None  # where the heading-only sections not joined yet begin
    for section in sections:
        if plan.strip(section.body, section.end)[0] == section.end:  # nothing under the heading
            if section.start < section.body and waiting is None:
                waiting = section.start
            continue
        start = section.start if waiting is None else waiting
        units.append(_Unit(start, section.body, section.end, section.end, section.path))
        waiting = None
    if waiting is not None:
        end = sections[-1].end
        if units:
            units[-1] = units[-1]._replace(end=end)
        else:  # a document of headings only
            units.append(_Unit(waiting, end, end, end, sections[-1].path))
    return units


def _sections(text: str, headings: list[tuple[int, int, int, str]]) -> list[_Section]:
    """Sections from each heading's (start, body, level, title), in order; text before the first heading is
    a section without a path."""
    sections = [_Section(0, 0, headings[0][0] if headings else len(text), ())]
    path: list[tuple[int, int, str]] = []  # (level, position, title)
    for index, (start, body, level, title) in enumerate(headings):
        path = [entry for entry in path if entry[0] < level] + [(level, start, title)]
        end = headings[index + 1][0] if index + 1 < len(headings) else len(text)
        sections.append(_Section(start, body, end, tuple((position, name) for _, position, name in path)))
    return sections


def _markdown_sections(text: str) -> list[_Section]:
    """ATX headings ("## Title") open sections; a heading-like line inside fenced code does not."""
    fences: list[tuple[int, int]] = []
    opening: int | None = None
    for match in _FENCE.finditer(text):
        if opening is None:
            opening = match.start()
        else:
            fences.append((opening, match.end()))
            opening = None
    if opening is not None:
        fences.append((opening, len(text)))
    fence_starts = [start for start, _ in fences]  # sorted: a binary search per heading, not a scan
    headings = []
    for match in _HEADING.finditer(text):
        fence = bisect.bisect_right(fence_starts, match.start()) - 1
        if fence >= 0 and match.start() < fences[fence][1]:
            continue
        headings.append((match.start(), match.end(), len(match.group(1)), match.group(2).strip()))
    return _sections(text, headings)


def _rst_sections(text: str) -> list[_Section]:
    """reStructuredText section titles; levels follow the order in which each adornment style (character,
    with or without an overline) first appears, as docutils assigns them."""
    styles: list[tuple[str, bool]] = []
    headings = []
    for underline in _RST_ADORNMENT.finditer(text):
        title = _rst_title(text, underline)
        if title is None:
            continue
        start, overlined, name = title
        style = (underline.group(1), overlined)
        if style not in styles:
            styles.append(style)
        headings.append((start, underline.end(), styles.index(style) + 1, name))
    return _sections(text, headings)


def _rst_title(text: str, underline: re.Match[str]) -> tuple[int, bool, str] | None:
    """(start, overlined, title) when `underline` underlines a title: the line above it is text no longer
    than the row, after a blank line, or after an overline identical to the underline that follows a
    blank line. Without an overline the title starts in the first column (else it is an indented block)."""
    row = underline.group().rstrip()
    line = _line_before(text, underline.start())
    if line is None or not line[1].strip() or _RST_ADORNMENT.fullmatch(line[1]) or len(row) < len(line[1].strip()):
        return None
    title_start, title = line
    above = _line_before(text, title_start)
    overline = above if above is not None and above[1].rstrip() == row else None
    if overline is not None:
        title_start, above = overline[0], _line_before(text, overline[0])
    elif title[0].isspace():
        return None
    if above is not None and above[1].strip():  # a title opens a block: a blank line (or the top) before it
        return None
    return title_start, overline is not None, title.strip()


def _line_before(text: str, start: int) -> tuple[int, str] | None:
    """(start, text without its line break) of the line before the one that begins at `start`; None at the top."""
    if start == 0:
        return None
    begin = text.rfind("\n", 0, start - 1) + 1
    return begin, text[begin : start - 1].rstrip("\r")


_SECTIONS = {"markdown": _markdown_sections, "rst": _rst_sections}


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

    `late=False` embeds each chunk's `embedding_text` (heading context, then text) on its own. `late=True`
    runs the model over the whole document (in overlapping windows beyond the model's limit) and mean-pools
    the token states inside each chunk's span, so a chunk's vector carries what the rest of the document
    says (the document is its context: `Chunk.context` is not used); mean-pooling local models only.
    """
    if not chunks:
        raise InputError("chunks is empty: nothing to embed")
    for index, chunk in enumerate(chunks):
        if text[chunk.start : chunk.end] != chunk.text:
            raise InputError(f"chunks[{index}] does not match the text at {chunk.start}:{chunk.end}")
    if not late:
        return embedder.embed([c.embedding_text for c in chunks], task=task, dimensions=dimensions, normalize=normalize)
    if not isinstance(embedder, SpanEmbedder):
        raise InputError(
            f"late chunking needs the model's token states, which {type(embedder).__name__} does not expose; "
            "use a local model (embedkit.load)"
        )
    spans = [(c.start, c.end) for c in chunks]
    return embedder.embed_spans(text, spans, task=task, dimensions=dimensions, normalize=normalize)
