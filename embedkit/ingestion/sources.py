"""Where documents come from: folders, files and JSON-lines exports, read into Documents with stable ids.

Doc identity: every document belongs to a source, and its id is the source plus its place in it, so two
different files never share an id (and so never overwrite each other's points):

    folder   source = the folder's path as given ("notes/a"), id = source + "/" + path inside ("notes/a/README.md")
    file     source = the file's path as given, id = that path
    .jsonl   source = the file's path as given, id = source + "/" + the record's `id`
    --source NAME replaces the path part, so ids stay the same when the corpus moves

A source's documents are the only ones `delete_missing` may remove (see embedkit.ingest, pipeline.py).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedkit.chunking import Strategy
from embedkit.embedder import check_encodable
from embedkit.errors import InputError

__all__ = [
    "DEFAULT_PATTERNS",
    "Document",
    "Unreadable",
    "check_document",
    "json_metadata",
    "list_files",
    "load_directory",
    "load_jsonl",
    "load_paths",
    "qualify",
    "read_document",
    "source_of",
    "strategy_for",
]

log = logging.getLogger(__name__)

DEFAULT_PATTERNS = ("*.md", "*.txt", "*.rst")
# the chunking strategy a file's extension implies: a .txt file is never parsed as markdown
_STRATEGY_BY_SUFFIX: dict[str, Strategy] = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".rst": "rst"}


@dataclass(frozen=True)
class Document:
    """One document to ingest.

    `id` is its full doc id (unique across sources); `source` the source it belongs to ("" when it was
    given without one); `origin` where it was read, for messages (a path, or path:line); `strategy` the
    chunking its format implies (None: the chunker decides); `offset` the characters of the stored file
    before `text` starts (a UTF-8 byte-order mark), so stored spans index the file as stored.
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    origin: str = ""
    strategy: Strategy | None = None
    offset: int = 0


@dataclass(frozen=True)
class Unreadable:
    """A document that could not be read; ingest reports it as a bad document (`empty`: always skipped,
    with a warning). `id` is its doc id when known (so delete_missing keeps its stored points), else None."""

    id: str | None
    reason: str
    source: str = ""
    origin: str = ""
    empty: bool = False


def source_of(path: str | os.PathLike[str]) -> str:
    """A path as given, normalised ("./notes/a/" -> "notes/a"), with '/' separators."""
    return Path(os.path.normpath(os.fspath(path))).as_posix()


def qualify(source: str, local_id: str) -> str:
    """The doc id of `local_id` within `source`."""
    return f"{source}/{local_id}" if source else local_id


def strategy_for(path: Path) -> Strategy | None:
    return _STRATEGY_BY_SUFFIX.get(path.suffix.lower())


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def list_files(
    root: str | Path, patterns: Iterable[str] = DEFAULT_PATTERNS, *, include_hidden: bool = False
) -> list[tuple[Path, str]]:
    """(path, path relative to `root` with '/') of the files under `root` matching `patterns`, sorted.

    Hidden files and folders (a name starting with '.', such as .git/) are left out unless
    `include_hidden`. A file `root` is itself the one file, relative path its name.
    """
    base = Path(root)
    if not base.exists():
        raise InputError(f"no such file or directory: {base}")
    if base.is_file():
        return [(base, base.name)]
    files = {
        p
        for pattern in patterns
        for p in base.rglob(pattern)
        if p.is_file() and (include_hidden or not _hidden(p.relative_to(base)))
    }
    return [(path, path.relative_to(base).as_posix()) for path in sorted(files)]


def load_paths(
    paths: Iterable[str | Path],
    patterns: Iterable[str] = DEFAULT_PATTERNS,
    *,
    source: str | None = None,
    include_hidden: bool = False,
) -> Iterator[Document | Unreadable]:
    """The documents of each path in turn: folders, text files and .jsonl files (see load_directory)."""
    for path in paths:
        yield from load_directory(path, patterns, source=source, include_hidden=include_hidden)


def load_directory(
    root: str | Path,
    patterns: Iterable[str] = DEFAULT_PATTERNS,
    *,
    source: str | None = None,
    include_hidden: bool = False,
) -> Iterator[Document | Unreadable]:
    """The documents under `root` (a folder, a text file, or a .jsonl file of records).

    Files matching `patterns` are read as UTF-8 text; .jsonl files among them are read as records (see
    load_jsonl). `source` defaults to `root` as given (see the module docstring for the ids).
    Hidden files and folders are skipped unless `include_hidden`.
    """
    base = Path(root)
    name = source_of(base) if source is None else source
    if base.is_file():  # a file named directly is its own source
        if base.suffix.lower() == ".jsonl":
            yield from load_jsonl(base, source=name)
        else:
            yield read_document(base, name if source is None else qualify(name, base.name), source=name)
        return
    for path, relative in list_files(base, patterns, include_hidden=include_hidden):
        if path.suffix.lower() == ".jsonl":
            yield from load_jsonl(path, source=name, prefix=relative)
        else:
            yield read_document(path, qualify(name, relative), source=name)


def load_jsonl(
    path: str | Path,
    *,
    text_field: str = "text",
    id_field: str = "id",
    metadata_field: str | None = "metadata",
    source: str | None = None,
    prefix: str = "",
) -> Iterator[Document | Unreadable]:
    """One Document per line of a JSON-lines file, read lazily.

    Each line is an object with `text_field` and `id_field`; `metadata_field` (an object) is kept as
    the doc's metadata, or, when the line has no such field, every other field is. The doc id is
    `source/prefix/record id` (`source` defaults to the file's path as given). A line that is not
    such an object becomes an Unreadable naming the file and line, which ingest reports or raises.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"no such file: {file}")
    name = source_of(file) if source is None else source
    container = qualify(name, prefix) if prefix else name
    with file.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            where = f"{file}:{number}"
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                yield Unreadable(None, f"{where}: not a JSON line ({exc})", name, where)
                continue
            if not isinstance(record, dict) or record.get(id_field) is None:
                yield Unreadable(None, f"{where}: expected an object with an {id_field!r} field", name, where)
                continue
            doc_id = qualify(container, str(record[id_field]))
            text = record.get(text_field)
            if metadata_field and metadata_field in record:
                metadata = record[metadata_field]
                if not isinstance(metadata, dict):
                    yield Unreadable(doc_id, f"{where}: {metadata_field!r} must be an object", name, where)
                    continue
            else:
                metadata = {k: v for k, v in record.items() if k not in (text_field, id_field)}
            yield Document(doc_id, text, dict(metadata), name, where)  # type: ignore[arg-type]


def read_document(path: Path, doc_id: str, *, source: str = "") -> Document | Unreadable:
    """One text file as a Document; its text without a UTF-8 byte-order mark (see Document.offset).

    Line endings are kept as stored, so chunk spans index the file's own characters. An undecodable
    or unreadable file is an Unreadable; an empty (or whitespace-only) one an `empty` Unreadable.
    """
    origin = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return Unreadable(doc_id, f"{path}: cannot read ({exc.strerror})", source, origin)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Unreadable(doc_id, f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", source, origin)
    offset = 1 if text.startswith("\ufeff") else 0
    text = text[offset:]
    if not text.strip():
        return Unreadable(doc_id, f"{path}: empty file, skipped", source, origin, empty=True)
    return Document(doc_id, text, {"source": doc_id}, source, origin, strategy_for(path), offset)


# -- checks ---------------------------------------------------------------------------------------


def check_document(doc: Document, where: str) -> Document:
    """`doc` with JSON-safe metadata if its text is non-blank, encodable str, else an InputError naming `where`."""
    if not isinstance(doc.text, str):
        raise InputError(f"{where}: text is {type(doc.text).__name__}, expected str")
    if not doc.text.strip():
        raise InputError(f"{where} is empty")
    check_encodable(doc.id, f"{where}: the doc id")
    check_encodable(doc.text, f"{where}: the text")
    if not isinstance(doc.metadata, dict):
        raise InputError(f"{where}: metadata is {type(doc.metadata).__name__}, expected a dict")
    metadata = json_metadata(doc.metadata, f"{where}: metadata")
    if metadata is doc.metadata:
        return doc
    return Document(doc.id, doc.text, metadata, doc.source, doc.origin, doc.strategy, doc.offset)


def json_metadata(value: Any, where: str) -> Any:
    """`value` in the form JSON holds, or InputError naming the key.

    Converted where the JSON form is obvious: numpy scalars to Python numbers, datetimes, dates and
    times to ISO 8601 strings, tuples to lists. Refused: NaN and infinities (not JSON), sets (no order),
    bytes (no text form), strings that cannot be encoded, non-string keys, and any other type. Returns
    `value` itself when nothing needed converting.
    """
    if value is None or (isinstance(value, (bool, int)) and type(value) in (bool, int)):
        return value
    if isinstance(value, str):
        check_encodable(value, where)
        return value if type(value) is str else str(value)
    if type(value) is float:
        if not math.isfinite(value):
            raise InputError(f"{where} is {value}, which JSON cannot hold; store None or a string")
        return value
    if isinstance(value, dict):
        out, changed = {}, False
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputError(f"{where} has the key {key!r} ({type(key).__name__}); JSON keys are strings")
            check_encodable(key, f"{where} key {key!r}")
            out[key] = json_metadata(item, f"{where}[{key!r}]")
            changed = changed or out[key] is not item
        return out if changed or type(value) is not dict else value
    if isinstance(value, (list, tuple)):
        items = [json_metadata(item, f"{where}[{index}]") for index, item in enumerate(value)]
        same = type(value) is list and all(a is b for a, b in zip(items, value, strict=True))
        return value if same else items
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    converted = _numpy_scalar(value)
    if converted is not None:
        return json_metadata(converted, where)
    hint = {"set": "a list", "frozenset": "a list", "bytes": "a string", "bytearray": "a string"}.get(
        type(value).__name__, "a str, number, bool, None, list or dict"
    )
    raise InputError(f"{where} is a {type(value).__name__}, which JSON cannot hold; convert it to {hint}")


def _numpy_scalar(value: Any) -> bool | int | float | None:
    """A numpy (or other) scalar's Python value (numpy.int64 -> int), else None."""
    item = getattr(value, "item", None)
    if item is None or getattr(value, "shape", None) != ():
        return None
    python = item()
    return python if isinstance(python, (bool, int, float)) else None
