"""Where vectors go. A sink knows points and payloads, nothing about models."""

from embedkit.sinks.base import Point, Sink
from embedkit.sinks.qdrant import QdrantSink

__all__ = ["Point", "Sink", "QdrantSink"]
