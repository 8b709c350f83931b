"""Where vectors go. A sink knows points and payloads, nothing about models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedkit.sinks.base import Point, SearchHit, Sink

if TYPE_CHECKING:
    from embedkit.sinks.qdrant import QdrantSink

__all__ = ["Point", "QdrantSink", "SearchHit", "Sink"]


def __getattr__(name: str) -> Any:
    # qdrant-client, qdrant-edge (and httpx under them) load only when a Qdrant sink is asked for
    if name == "QdrantSink":
        from embedkit.sinks.qdrant import QdrantSink

        return QdrantSink
    raise AttributeError(f"module 'embedkit.sinks' has no attribute {name!r}")
