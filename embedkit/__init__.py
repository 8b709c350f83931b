"""embedkit: text -> vectors -> a searchable Qdrant collection, locally or through TEI."""

from embedkit.embedder import Embedder
from embedkit.errors import (
    EmbedkitError,
    InputError,
    MissingDependencyError,
    ModelLoadError,
    ModelNotFoundError,
    StoreError,
    UnknownTaskError,
)
from embedkit.runtime import LocalEmbedder, load

__version__ = "0.1.0"

__all__ = [
    "Embedder",
    "EmbedkitError",
    "InputError",
    "LocalEmbedder",
    "MissingDependencyError",
    "ModelLoadError",
    "ModelNotFoundError",
    "StoreError",
    "UnknownTaskError",
    "load",
]
