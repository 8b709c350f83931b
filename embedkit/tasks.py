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

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from embedkit.errors import UnknownTaskError

__all__ = ["ALIASES", "CANONICAL_TASKS", "KNOWN_PROMPTS", "KnownPrompts", "TaskTable", "known_prompts"]

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


@dataclass(frozen=True)
class KnownPrompts:
    """A model's prompt prefixes as its authors publish them, for servers that do not list them.

    TEI's /info has no prompts, so a remote client that wants `task="query"` must know the text
    itself. `adapters` names LoRA adapters a task selects, which a prefix cannot reproduce.
    """

    prompts: Mapping[str, str]
    source: str  # where the strings come from
    adapters: tuple[str, ...] = ()

    def table(self) -> TaskTable:
        return TaskTable(self.prompts, adapters=self.adapters)


_BGE_QUERY = "Represent this sentence for searching relevant passages: "
_WEB_SEARCH = "Given a web search query, retrieve relevant passages that answer the query"
_SYMMETRIC = KnownPrompts({}, "model card: symmetric model, texts are embedded without a prefix")

# Keyed by Hugging Face model id; `*` matches any run of characters, case is ignored, and the first
# matching key wins, so specific ids come before the patterns that would also match them.
KNOWN_PROMPTS: dict[str, KnownPrompts] = {
    "intfloat/e5-mistral-7b-instruct": KnownPrompts(
        {"query": f"Instruct: {_WEB_SEARCH}\nQuery: "},
        "intfloat/e5-mistral-7b-instruct model card: queries as 'Instruct: {task}\\nQuery: {query}', "
        "documents as they are",
    ),
    "intfloat/multilingual-e5-large-instruct": KnownPrompts(
        {"query": f"Instruct: {_WEB_SEARCH}\nQuery: "},
        "intfloat/multilingual-e5-large-instruct model card: same instruction form as e5-mistral",
    ),
    "intfloat/*e5-*": KnownPrompts(
        {"query": "query: ", "passage": "passage: "},
        "intfloat/e5-base-v2 model card FAQ: every input starts with 'query: ' or 'passage: '",
    ),
    "Qwen/Qwen3-Embedding-*": KnownPrompts(
        {"query": f"Instruct: {_WEB_SEARCH}\nQuery:", "document": ""},
        "Qwen3-Embedding config_sentence_transformers.json prompts.query: no space after 'Query:' "
        "(reference/model-families.md section 5.2)",
    ),
    "Alibaba-NLP/gte-Qwen2-*": KnownPrompts(
        {"query": f"Instruct: {_WEB_SEARCH}\nQuery: "},
        "gte-Qwen2-1.5B-instruct config_sentence_transformers.json prompts.query: a space after 'Query:' "
        "(reference/model-families.md section 4)",
    ),
    "nomic-ai/nomic-embed-text-*": KnownPrompts(
        {
            "search_query": "search_query: ",
            "search_document": "search_document: ",
            "classification": "classification: ",
            "clustering": "clustering: ",
        },
        "nomic-embed-text-v1 / v1.5 model card, 'Task instruction prefixes'",
    ),
    "nomic-ai/modernbert-embed-*": KnownPrompts(
        {"search_query": "search_query: ", "search_document": "search_document: "},
        "nomic-ai/modernbert-embed-base model card, 'Usage': queries as 'search_query: ...', documents as "
        "'search_document: ...' (trained with nomic-embed-text's prefixes)",
    ),
    "Alibaba-NLP/gte-modernbert-base": KnownPrompts(
        {}, "Alibaba-NLP/gte-modernbert-base model card, 'Usage': queries and documents embedded without a prefix"
    ),
    "BAAI/bge-*-en-v1.5": KnownPrompts(
        {"query": _BGE_QUERY},
        "BAAI/bge-base-en-v1.5 model card and FlagEmbedding README: query instruction for retrieval, "
        "passages without one",
    ),
    "jinaai/jina-embeddings-v3": KnownPrompts(
        {
            "retrieval.query": "Represent the query for retrieving evidence documents: ",
            "retrieval.passage": "Represent the document for retrieval: ",
            "separation": "",
            "classification": "",
            "text-matching": "",
        },
        "jina-embeddings-v3 config_sentence_transformers.json and config.json lora_adaptations "
        "(reference/model-families.md section 1.1)",
        adapters=("retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"),
    ),
    "google/embeddinggemma-*": KnownPrompts(
        {
            "query": "task: search result | query: ",
            "document": "title: none | text: ",
            "BitextMining": "task: search result | query: ",
            "Clustering": "task: clustering | query: ",
            "Classification": "task: classification | query: ",
            "InstructionRetrieval": "task: code retrieval | query: ",
            "MultilabelClassification": "task: classification | query: ",
            "PairClassification": "task: sentence similarity | query: ",
            "Reranking": "task: search result | query: ",
            "Retrieval": "task: search result | query: ",
            "Retrieval-query": "task: search result | query: ",
            "Retrieval-document": "title: none | text: ",
            "STS": "task: sentence similarity | query: ",
            "Summarization": "task: summarization | query: ",
        },
        "google/embeddinggemma-300m config_sentence_transformers.json prompts (default_prompt_name null) and "
        "model card 'Prompt instructions': documents as 'title: {title | none} | text: {content}'",
    ),
    "sentence-transformers/all-MiniLM-L6-v2": _SYMMETRIC,
    "sentence-transformers/all-MiniLM-L12-v2": _SYMMETRIC,
    "sentence-transformers/all-mpnet-base-v2": _SYMMETRIC,
    "sentence-transformers/multi-qa-mpnet-base-*-v1": KnownPrompts(
        {},
        "multi-qa-mpnet-base-dot-v1 / -cos-v1 model cards: query and documents both encoded as they are "
        "(model.encode(query), model.encode(docs)), no prefix",
    ),
}


def known_prompts(model_id: str | None) -> KnownPrompts | None:
    """The KNOWN_PROMPTS entry for `model_id` (a hub id, or a local path ending in org/name)."""
    if not model_id:
        return None
    parts = model_id.replace("\\", "/").rstrip("/").lower().split("/")
    candidates = [model_id.lower(), "/".join(parts[-2:])]
    for key, entry in KNOWN_PROMPTS.items():
        if any(fnmatch.fnmatchcase(candidate, key.lower()) for candidate in candidates):
            return entry
    return None
