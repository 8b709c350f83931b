"""The one exception tree of embedkit.

    EmbedkitError
    ├── InputError (ValueError)          bad texts, task, dimensions, arguments: says what and where
    │   └── UnknownTaskError             names the task and lists the valid ones
    ├── ModelLoadError                   a model directory or file that cannot be used, naming the file
    │   └── ModelNotFoundError           no such directory, or not fetchable from the hub
    ├── MissingDependencyError (ImportError)   an optional extra is not installed: says what to pip install
    ├── StoreError                       the vector store refused or does not match (dimension, embedder)
    └── RemoteError                      an embedding server misbehaved or stayed unreachable; carries .status
        └── AuthError                    the server refused the API key (401 / 403)

This module imports neither torch nor httpx, so any layer may raise from it.
Messages carry context (index, length, field, path) but never a secret.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "EmbedkitError",
    "InputError",
    "MissingDependencyError",
    "ModelLoadError",
    "ModelNotFoundError",
    "RemoteError",
    "StoreError",
    "UnknownTaskError",
]


class EmbedkitError(Exception):
    """Base class of every error embedkit raises on purpose."""


class InputError(EmbedkitError, ValueError):
    """The caller passed something embedkit cannot embed or store as asked.

    `index` is the position of the offending text in the caller's list, when one text is to blame.
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class UnknownTaskError(InputError):
    """A task name the model does not define."""

    def __init__(self, task: str, valid: list[str]) -> None:
        self.task = task
        self.valid = list(valid)
        names = ", ".join(repr(name) for name in self.valid) or "(none: this model defines no tasks)"
        super().__init__(f"unknown task {task!r}; valid tasks for this model: {names}")


class ModelLoadError(EmbedkitError):
    """A model directory, config or weight file that cannot be loaded as it is."""


class ModelNotFoundError(ModelLoadError):
    """The model is neither a local directory nor reachable on the Hugging Face Hub."""


class MissingDependencyError(EmbedkitError, ImportError):
    """An optional dependency is missing; the message gives the pip command that installs it."""


class StoreError(EmbedkitError):
    """The vector store failed or holds a collection that does not match this embedder."""


class RemoteError(EmbedkitError):
    """An embedding server failed: unreachable or erroring after the retries, or an answer that is
    not what the protocol promises. `status` is the last HTTP status, None when none was received."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(RemoteError):
    """The server refused the request's credentials (HTTP 401 or 403); never retried."""
