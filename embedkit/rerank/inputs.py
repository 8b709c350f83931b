"""The inputs every reranker takes, checked once: (query, document) pairs, or a query and its documents.

One policy for cross-encoders and LLM rerankers alike: a query must hold text (an empty or whitespace-only
query ranks nothing), a document may be empty (it is scored like any other: a candidate with no text is
still a candidate), and every text must be a str the tokenizer can encode. Errors name the argument and index.
"""

from __future__ import annotations

from collections.abc import Sequence

from embedkit.embedder import check_encodable
from embedkit.errors import InputError

__all__ = ["check_pairs", "check_top_k", "rerank_pairs"]


def check_pairs(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """`pairs` as a list of (query, document) str tuples; InputError for an empty list, a pair that is not
    two strings, an empty query or text that cannot be encoded, naming `pairs[i]`."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise InputError(f"pairs must be a list of (query, document) tuples, got {type(pairs).__name__}")
    if len(pairs) == 0:
        raise InputError("pairs is empty: pass at least one (query, document) pair")
    checked: list[tuple[str, str]] = []
    for index, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InputError(f"pairs[{index}] must be a (query, document) pair of str", index=index)
        query, document = pair
        for part, text in (("query", query), ("document", document)):
            if not isinstance(text, str):
                raise InputError(f"pairs[{index}]'s {part} is {type(text).__name__}, expected str", index=index)
            check_encodable(text, f"pairs[{index}]'s {part}", index=index)
        if not query.strip():
            raise InputError(f"pairs[{index}]'s query is empty", index=index)
        checked.append((query, document))
    return checked


def check_top_k(top_k: int | None) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"top_k={top_k!r}: expected a positive int or None")


def rerank_pairs(query: str, documents: Sequence[str], top_k: int | None) -> list[tuple[str, str]]:
    """The (query, document) pairs of a `rerank` call; InputError for an empty or non-str query, an empty
    document list, a non-str document (naming `documents[i]`) or `top_k < 1`."""
    if not isinstance(query, str):
        raise InputError(f"query is {type(query).__name__}, expected str")
    if not query.strip():
        raise InputError("query is empty: pass the text to rank the documents against")
    check_encodable(query, "query")
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InputError(f"documents must be a list of str, got {type(documents).__name__}")
    if len(documents) == 0:
        raise InputError("documents is empty: pass at least one document to rerank")
    for index, document in enumerate(documents):
        if not isinstance(document, str):
            raise InputError(f"documents[{index}] is {type(document).__name__}, expected str", index=index)
        check_encodable(document, f"documents[{index}]", index=index)
    check_top_k(top_k)
    return [(query, document) for document in documents]
