"""Task names -> the prompt prefix (and, for multi-adapter models, the adapter) a model uses.

Canonical tasks are `query` and `document`; a model may define more (its sentence-transformers
`prompts`, e.g. `classification`, `clustering`). A model whose prompts name the canonical tasks
differently (`passage`, `retrieval.query`, `search_document`, ...) is mapped through ALIASES.
A model with no prompt for a canonical task embeds that task's texts as they are (symmetric
models such as all-MiniLM-L6-v2; Qwen3-Embedding documents).

Multi-adapter models (jina-embeddings-v3) also name a LoRA adapter per task: `adapter(task)` gives
its index, -1 for the base weights (no task, or a task without an adapter).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from embedkit.errors import UnknownTaskError

__all__ = ["CANONICAL_TASKS", "ALIASES", "TaskTable"]

CANONICAL_TASKS = ("query", "document")

# The prompt names models publish for the canonical tasks, most specific first.
ALIASES: dict[str, tuple[str, ...]] = {
    "query": ("query", "retrieval.query", "search_query", "query_prompt"),
    "document": ("document", "passage", "retrieval.passage", "search_document", "corpus", "doc"),
}


@dataclass(frozen=True)
class TaskTable:
    """The tasks one model knows, each with its prompt prefix.

    `prompts` maps the model's own prompt names to prefixes; `default_prompt_name` is applied when
    no task is given, as sentence-transformers does.
    """

    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    adapters: Sequence[str] = ()  # LoRA adapter names, in the checkpoint's order

    @property
    def names(self) -> list[str]:
        """Every task name accepted by `prefix`: canonical first, then the model's own."""
        own = [*self.prompts, *(name for name in self.adapters if name not in self.prompts)]
        return list(CANONICAL_TASKS) + [name for name in own if name not in CANONICAL_TASKS]

    def resolve(self, task: str) -> str:
        """The model's own name for `task` ('' when the model has none for a canonical task)."""
        if task in self.prompts or task in self.adapters:
            return task
        if task in ALIASES:
            for alias in ALIASES[task]:
                if alias in self.prompts or alias in self.adapters:
                    return alias
            return ""
        raise UnknownTaskError(task, self.names)

    def adapter(self, task: str | None) -> int:
        """Index of the LoRA adapter `task` uses; -1 for the base weights."""
        if task is None or not self.adapters:
            return -1
        if not isinstance(task, str):
            raise UnknownTaskError(repr(task), self.names)
        name = self.resolve(task)
        return list(self.adapters).index(name) if name in self.adapters else -1

    def prefix(self, task: str | None) -> str:
        """The text to prepend for `task`; None means the model's default prompt, if any."""
        if task is None:
            return self.prompts.get(self.default_prompt_name, "") if self.default_prompt_name else ""
        if not isinstance(task, str):
            raise UnknownTaskError(repr(task), self.names)
        name = self.resolve(task)
        return self.prompts.get(name, "") if name else ""
