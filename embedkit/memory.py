"""Giving freed heap memory back to the operating system, for long-running loops.

glibc keeps freed heap pages for reuse, and with tensors of ever-changing shapes allocated across
threads its heap fragments: a long ingest or a busy server shows RSS creeping up while what Python
and torch hold stays flat. Measured: ingest +90 MB over 150k docs (+8 MB with trimming); `embedkit
serve` under a 60 s soak 864 -> 1161 MiB. `release_freed_memory()` after each batch keeps RSS honest;
where there is no glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["release_freed_memory"]


def _trimmer() -> Callable[[], object]:
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


_trim = _trimmer()


def release_freed_memory() -> None:
    """Return the heap's free pages to the OS (glibc malloc_trim); a no-op elsewhere."""
    _trim()
