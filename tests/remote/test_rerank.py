"""The clients' rerank over httpx's MockTransport: TEI's /rerank and the Cohere/Jina-style /v1/rerank (vLLM's and
infinity's answer shapes), parts of the server's batch size merged by score with the caller's indices, refusals
split, retries, auth, the wrong kind of server, and answers that are not the protocol's shape refused.
(A real `embedkit serve` of a cross-encoder answers them in tests/server/test_rerank_serve.py.)"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

from embedkit import AsyncTEIClient, AuthError, InputError, RemoteError, TEIClient
from embedkit.remote import RetryPolicy
from embedkit.rerank.base import RerankResult

RERANKER_INFO = {
    "model_id": "cross-encoder/ms-marco-MiniLM-L6-v2",
    "max_client_batch_size": 4,
    "max_input_length": 512,
    "model_type": {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
}
EMBEDDER_INFO = {**RERANKER_INFO, "model_type": {"embedding": {"pooling": "mean"}}}
FAST = RetryPolicy(attempts=3, backoff=0.0, max_backoff=0.0)

Handler = Callable[[httpx.Request], httpx.Response]


def score_of(text: str) -> float:
    """Texts here end with a number, which is their score: 'doc 7' -> 0.7 (so the expected order is known)."""
    return int(text.rsplit(" ", 1)[-1]) / 10


def tei(seen: list[dict], *, info: dict | None = None, refuse_over: int | None = None, status_422: bool = False):
    """A TEI /rerank: answers each part sorted by score, as TEI does, with text when return_text."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(200, json=info or RERANKER_INFO)
        assert request.url.path == "/rerank"
        body = json.loads(request.read())
        seen.append(body)
        count = len(body["texts"])
        if refuse_over is not None and count > refuse_over:
            if status_422:  # TEI >= 1.9
                message = f"batch size {count} > maximum allowed batch size {refuse_over}"
                return httpx.Response(422, json={"error": message, "error_type": "Validation"})
            return httpx.Response(413, json={"error": "Batch size error", "error_type": "Validation"})
        ranks = [
            {"index": i, "score": score_of(text), **({"text": text} if body["return_text"] else {})}
            for i, text in enumerate(body["texts"])
        ]
        return httpx.Response(200, json=sorted(ranks, key=lambda r: -r["score"]))

    return httpx.MockTransport(handler)


def expected(texts: list[str], top_k: int | None = None, documents: bool = False) -> list[RerankResult]:
    order = sorted(range(len(texts)), key=lambda i: (-score_of(texts[i]), i))[:top_k]
    return [RerankResult(i, score_of(texts[i]), texts[i] if documents else None) for i in order]


TEXTS = [f"doc {n}" for n in (3, 9, 1, 7, 5, 2, 8, 4, 6, 0)]


def test_tei_wire_format_parts_and_merge() -> None:
    seen: list[dict] = []
    with TEIClient("http://tei", transport=tei(seen)) as client:
        assert client.rerank("what?", TEXTS) == expected(TEXTS)
        assert client.rerank("what?", TEXTS, top_k=3, return_documents=True) == expected(TEXTS, 3, True)
        client.rerank("what?", TEXTS[:2], raw_scores=True, truncate=False, truncation_direction="left")
    # parts of the server's max_client_batch_size (4), indices mapped back to the caller's list
    assert [len(body["texts"]) for body in seen[:3]] == [4, 4, 2]
    assert seen[0] == {"query": "what?", "texts": TEXTS[:4], "raw_scores": False, "return_text": False}
    assert seen[3]["return_text"] is True
    assert seen[-1] == {
        "query": "what?",
        "texts": TEXTS[:2],
        "raw_scores": True,
        "return_text": False,
        "truncate": False,
        "truncation_direction": "Left",
    }


def test_ties_keep_input_order_across_parts() -> None:
    texts = ["a 5", "b 5", "c 5", "d 5", "e 5", "f 9"]
    with TEIClient("http://tei", transport=tei([])) as client:
        assert [r.index for r in client.rerank("q", texts)] == [5, 0, 1, 2, 3, 4]


@pytest.mark.parametrize("status_422", [False, True])
def test_a_refused_part_is_split(status_422: bool) -> None:
    seen: list[dict] = []
    with TEIClient("http://tei", transport=tei(seen, refuse_over=1, status_422=status_422)) as client:
        assert client.rerank("q", TEXTS[:4], top_k=2) == expected(TEXTS[:4], 2)
    sizes = [len(body["texts"]) for body in seen]
    # 413 says no limit: halves; TEI >= 1.9's 422 names it: parts of 1 at once
    assert sizes == ([4, 2, 1, 1, 2, 1, 1] if not status_422 else [4, 1, 1, 1, 1])


def test_one_text_refused_alone_is_the_callers_input_error() -> None:
    with TEIClient("http://tei", transport=tei([], refuse_over=0)) as client:
        with pytest.raises(InputError, match=r"texts\[0\] is too large for the server even alone") as caught:
            client.rerank("q", ["doc 1", "doc 2"])
    assert caught.value.index == 0


def test_vllm_and_infinity_v1_rerank() -> None:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/info" or request.url.path == "/info":
            return httpx.Response(404)
        assert request.url.path == "/v1/rerank"
        body = json.loads(request.read())
        seen.append(body)
        ranked = sorted(enumerate(body["documents"]), key=lambda item: -score_of(item[1]))[: body.get("top_n")]
        if body["model"] == "vllm":  # vLLM: document always there, {"text": ...}
            results = [{"index": i, "relevance_score": score_of(t), "document": {"text": t}} for i, t in ranked]
            return httpx.Response(200, json={"id": "x", "model": "vllm", "results": results, "usage": {}})
        # infinity: document a plain string, or null without return_documents
        results = [
            {"index": i, "relevance_score": score_of(t), "document": t if body["return_documents"] else None}
            for i, t in ranked
        ]
        return httpx.Response(200, json={"object": "rerank", "results": results, "model": "infinity"})

    for model in ("vllm", "infinity"):
        seen.clear()
        client = TEIClient(
            "http://host/v1", api="openai", model=model, batch_size=4, transport=httpx.MockTransport(handler)
        )
        assert client.rerank("q", TEXTS, top_k=3, return_documents=True) == expected(TEXTS, 3, True)
        assert client.rerank("q", TEXTS) == expected(TEXTS)
        client.rerank("q", TEXTS[:2], raw_scores=True)
        assert seen[0] == {"model": model, "query": "q", "documents": TEXTS[:4], "return_documents": True, "top_n": 3}
        assert [len(body["documents"]) for body in seen[:3]] == [4, 4, 2]
        assert seen[2]["top_n"] == 2  # a part of 2 cannot give 3
        assert seen[-1]["raw_scores"] is True and seen[-1]["use_activation"] is False
        with pytest.raises(InputError, match="cannot choose truncation"):
            client.rerank("q", TEXTS, truncate=False)
        client.close()


def test_retries_429_and_503_then_succeeds() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(200, json=RERANKER_INFO)
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(429, json={"error": "Model is overloaded", "error_type": "Overloaded"})
        if len(calls) == 2:
            return httpx.Response(503, headers={"Retry-After": "0"})
        return httpx.Response(200, json=[{"index": 0, "score": 0.5}])

    with TEIClient("http://tei", retry=FAST, transport=httpx.MockTransport(handler)) as client:
        assert client.rerank("q", ["only"]) == [RerankResult(0, 0.5)]
    assert len(calls) == 3


def test_auth_and_the_wrong_kind_of_server() -> None:
    refused = httpx.MockTransport(
        lambda request: (
            httpx.Response(200, json=RERANKER_INFO)
            if request.url.path == "/info"
            else httpx.Response(401, json={"error": "missing or wrong API key", "error_type": "Unauthorized"})
        )
    )
    with pytest.raises(AuthError, match="refused the credentials"):
        TEIClient("http://tei", transport=refused).rerank("q", ["a"])

    # /info says it is an embedder: no /rerank request is sent
    seen: list[dict] = []
    with pytest.raises(
        RemoteError, match=r"an embedding model .*not a reranker: rerank cannot run there; that server answers /embed"
    ):
        TEIClient("http://tei", transport=tei(seen, info=EMBEDDER_INFO)).rerank("q", ["doc 1"])
    assert seen == []
    # and the reverse: a reranker server asked to embed
    with pytest.raises(RemoteError, match=r"a reranker .*not an embedding model: embed cannot run"):
        TEIClient("http://tei", transport=tei([])).embed(["x"])
    with pytest.raises(RemoteError, match=r"a reranker .*embed_sparse cannot run"):
        TEIClient("http://tei", transport=tei([])).embed_sparse(["x"])

    # a server whose /info says no model_type: TEI's own 424 reaches the caller as a RemoteError
    def old_tei(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(200, json={k: v for k, v in RERANKER_INFO.items() if k != "model_type"})
        body = {"error": "Backend error: model is not a re-ranker model", "error_type": "Backend"}
        return httpx.Response(424, json=body)

    with pytest.raises(RemoteError, match="424: Backend error: model is not a re-ranker model") as caught:
        TEIClient("http://tei", transport=httpx.MockTransport(old_tei)).rerank("q", ["a"])
    assert caught.value.status == 424


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("", ["a"]), {}, "query is empty"),
        (("   ", ["a"]), {}, "query is empty"),
        ((None, ["a"]), {}, "query must be a str"),
        (("q", []), {}, "texts is empty"),
        (("q", "one text"), {}, "texts must be a list"),
        (("q", ["a", 3]), {}, r"texts\[1\]"),
        (("q", ["a"]), {"top_k": 0}, "top_k must be a positive int"),
        (("q", ["a"]), {"raw_scores": "yes"}, "raw_scores must be a bool"),
        (("q", ["a"]), {"truncation_direction": "middle"}, "truncation_direction"),
    ],
)
def test_bad_arguments_send_nothing(args: tuple, kwargs: dict, message: str) -> None:
    seen: list[dict] = []
    with TEIClient("http://tei", transport=tei(seen)) as client:
        with pytest.raises(InputError, match=message):
            client.rerank(*args, **kwargs)
    assert seen == []


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ([{"index": 0, "score": 0.1}, {"index": 0, "score": 0.2}], "repeated or out-of-range index"),
        ([{"index": 0, "score": 0.1}, {"index": 2, "score": 0.2}], "repeated or out-of-range index"),
        ([{"index": 0, "score": 0.1}], "answered 1 results for 2 documents"),
        ([{"index": 0, "score": "NaN"}, {"index": 1, "score": 0.2}], "no finite score for texts"),
        ({"results": []}, "something other than a list"),
    ],
)
def test_answers_not_in_the_protocols_shape_are_refused(answer: object, message: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(200, json=RERANKER_INFO)
        return httpx.Response(200, json=answer)

    with pytest.raises(RemoteError, match=message):
        TEIClient("http://tei", transport=httpx.MockTransport(handler)).rerank("q", ["a", "b"])


def test_async_matches_sync() -> None:
    seen: list[dict] = []

    async def run() -> list[list[RerankResult]]:
        async with AsyncTEIClient("http://tei", transport=tei(seen, refuse_over=3)) as client:
            return [
                await client.rerank("q", TEXTS),
                await client.rerank("q", TEXTS, top_k=4, return_documents=True, raw_scores=True),
            ]

    assert asyncio.run(run()) == [expected(TEXTS), expected(TEXTS, 4, True)]
    with pytest.raises(InputError, match="texts is empty"):
        asyncio.run(AsyncTEIClient("http://tei", transport=tei([])).rerank("q", []))


def test_the_client_imports_no_torch() -> None:
    code = (
        "import sys; from embedkit import TEIClient, AsyncTEIClient; import embedkit.rerank.base, "
        "embedkit.remote.wire; print('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
