"""The reranking contract: a query and candidate documents in, one relevance score per document out.

A reranker is the second stage of retrieval: the first stage (dense, sparse or hybrid search) fetches
`fetch_k` candidates cheaply, the reranker reads each (query, document) pair together and reorders them.
Cross-encoders (a sequence-classification head on BERT, XLM-RoBERTa, GTE ...) and LLM rerankers
(Qwen3-Reranker: a causal LM's "yes" against "no" at the last position) both satisfy `Reranker`; the server's
/rerank, the clients' `rerank`, the sinks' `search(reranker=...)` and the LangChain compressor rely on
nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["RerankResult", "Reranker", "order_results"]


@dataclass(frozen=True)
class RerankResult:
    """One document's place in a reranking.

    `index` is the document's position in the list given to `rerank`; `score` its relevance (after the
    model's activation, e.g. a sigmoid probability, unless raw scores were asked for: then the logit);
    `document` the text itself when `return_documents=True`, else None.
    """

    index: int
    score: float
    document: str | None = None


def order_results(
    scores: Sequence[float], documents: Sequence[str], *, top_k: int | None, return_documents: bool
) -> list[RerankResult]:
    """Scores -> results sorted by score, highest first (ties keep input order), cut to `top_k`."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if top_k is not None:
        order = order[:top_k]
    return [
        RerankResult(index=i, score=float(scores[i]), document=documents[i] if return_documents else None)
        for i in order
    ]


@runtime_checkable
class Reranker(Protocol):
    """Scores (query, document) pairs; higher means more relevant."""

    @property
    def model_id(self) -> str:
        """The model's id (hub id or folder name), for /info and reports."""

    @property
    def max_input_tokens(self) -> int:
        """The longest pair (query + document + special tokens / template) the model takes, in tokens."""

    @property
    def truncated_count(self) -> int:
        """Pairs whose document was cut to fit `max_input_tokens`, over this reranker's life."""

    def score(
        self, pairs: Sequence[tuple[str, str]], *, raw_scores: bool = False, truncate: bool = True
    ) -> list[float]:
        """One score per (query, document) pair, in input order.

        `raw_scores=True` gives the model's logit before its activation. A pair longer than
        `max_input_tokens` has its document cut (the query is kept whole) and is counted in
        `truncated_count`; `truncate=False` raises InputError for such a pair instead.
        Raises InputError for an empty pair list or an empty query.
        """

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int | None = None,
        return_documents: bool = False,
        raw_scores: bool = False,
        truncate: bool = True,
    ) -> list[RerankResult]:
        """`documents` ordered by relevance to `query`, best first, at most `top_k` of them.

        Raises InputError for an empty query, an empty document list or `top_k < 1`.
        """

    def fingerprint(self) -> dict[str, Any]:
        """What decides the scores (model id, weights digest, activation, template)."""
