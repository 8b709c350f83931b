"""`embedkit serve` of a tiny cross-encoder, a real process on 127.0.0.1: TEI's /rerank and /v1/rerank equal the
local reranker's scores and order, TEIClient.rerank and AsyncTEIClient.rerank through it, and the bad inputs
and wrong kinds of model answered in TEI's shapes, on the server and as the clients' typed errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

import embedkit
from embedkit import AsyncTEIClient, InputError, RemoteError, TEIClient
from embedkit.remote import ServerInfo
from embedkit.rerank import Reranker, RerankResult

from .conftest import API_KEY, RERANK_BATCH, RunningServer, assert_tei_error, post

BATCH = RERANK_BATCH  # TEXTS needs two requests from a client
QUERY = "how do vector databases index embeddings?"
TEXTS = [
    "Qdrant stores vectors with payloads and indexes them with HNSW.",
    "The weather in Lisbon is mild in winter.",
    "An embedding maps a text to a point in a vector space.",
    "",  # an empty document is scored, as locally
    "Rerankers read the query and the document together.",
    "Bananas are rich in potassium.",
    "HNSW is a graph of layers for approximate nearest neighbour search.",
]
LONG = "vector search " * 200  # well past the tiny model's 128 positions


@pytest.fixture(scope="module")
def local(cross_encoder_dir: Path) -> Reranker:
    # the server's loader and arguments (torch backend: the same kernels on both sides of the comparison)
    return embedkit.load_reranker(cross_encoder_dir, backend="torch", device="cpu")


def assert_same_ranking(served: list[RerankResult], local: list[RerankResult]) -> None:
    assert [r.index for r in served] == [r.index for r in local]
    assert [r.score for r in served] == pytest.approx([r.score for r in local], abs=1e-6)
    assert [r.document for r in served] == [r.document for r in local]


def test_info_says_reranker(rerank_server: RunningServer, cross_encoder_dir: Path, local: Reranker) -> None:
    info = httpx.get(f"{rerank_server.url}/info", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert info["model_type"] == {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
    assert info["model_id"] == local.model_id
    assert info["max_input_length"] == local.max_input_tokens
    assert info["max_client_batch_size"] == BATCH


def test_served_rerank_equals_local(rerank_server: RunningServer, local: Reranker) -> None:
    texts = TEXTS[:BATCH]
    response = post(rerank_server, "/rerank", {"query": QUERY, "texts": texts, "return_text": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert all(set(rank) == {"index", "score", "text"} for rank in body)
    served = [RerankResult(rank["index"], rank["score"], rank["text"]) for rank in body]
    assert_same_ranking(served, local.rerank(QUERY, texts, return_documents=True))
    assert int(response.headers["x-compute-characters"]) == len(QUERY) * len(texts) + sum(map(len, texts))

    raw = post(rerank_server, "/rerank", {"query": QUERY, "texts": texts, "raw_scores": True}).json()
    assert all(set(rank) == {"index", "score"} for rank in raw)  # no text unless return_text, as TEI
    assert_same_ranking(
        [RerankResult(r["index"], r["score"]) for r in raw], local.rerank(QUERY, texts, raw_scores=True)
    )
    assert any(r["score"] < 0 or r["score"] > 1 for r in raw)  # logits, not sigmoid probabilities


def test_truncation_as_the_contract_allows(rerank_server: RunningServer, local: Reranker) -> None:
    texts = [LONG, "short"]
    served = post(rerank_server, "/rerank", {"query": QUERY, "texts": texts}).json()
    assert_same_ranking([RerankResult(r["index"], r["score"]) for r in served], local.rerank(QUERY, texts))
    # the cross-encoder cuts either end of the document, so "left" is honoured
    left = post(rerank_server, "/rerank", {"query": QUERY, "texts": texts, "truncation_direction": "Left"}).json()
    expected = local.rerank(QUERY, texts, truncation_direction="left")  # type: ignore[call-arg]
    assert_same_ranking([RerankResult(r["index"], r["score"]) for r in left], expected)
    # truncate: false refuses the long pair, naming it
    message = assert_tei_error(
        post(rerank_server, "/rerank", {"query": QUERY, "texts": texts, "truncate": False}), 422, "Validation"
    )
    assert "over this model's limit" in message
    with TEIClient(rerank_server.url, api_key=API_KEY) as client:
        with pytest.raises(InputError, match="over this model's limit") as caught:
            client.rerank(QUERY, texts, truncate=False)
    assert caught.value.index == 0


def test_clients_rerank_through_the_server(rerank_server: RunningServer, local: Reranker) -> None:
    expected = local.rerank(QUERY, TEXTS, return_documents=True)
    with TEIClient(rerank_server.url, api_key=API_KEY) as client:
        # 7 texts, 4 a request: two parts, merged by score with the caller's indices
        assert_same_ranking(client.rerank(QUERY, TEXTS, return_documents=True), expected)
        assert_same_ranking(client.rerank(QUERY, TEXTS, top_k=3), local.rerank(QUERY, TEXTS, top_k=3))
        assert_same_ranking(client.rerank(QUERY, TEXTS, raw_scores=True), local.rerank(QUERY, TEXTS, raw_scores=True))

    async def run() -> list[RerankResult]:
        async with AsyncTEIClient(rerank_server.url, api_key=API_KEY) as client:
            return await client.rerank(QUERY, TEXTS, return_documents=True)

    assert_same_ranking(asyncio.run(run()), expected)

    # the Cohere/Jina-style route of the same server, as a vLLM or infinity client would call it
    with TEIClient(f"{rerank_server.url}/v1", api="openai", model="any", api_key=API_KEY) as client:
        assert_same_ranking(client.rerank(QUERY, TEXTS, top_k=5, return_documents=True), expected[:5])
    body = post(rerank_server, "/v1/rerank", {"query": QUERY, "documents": TEXTS[:3], "top_n": 2}).json()
    assert [r["index"] for r in body["results"]] == [r.index for r in local.rerank(QUERY, TEXTS[:3], top_k=2)]
    assert all(set(r) == {"index", "relevance_score"} for r in body["results"])


def test_bad_input_in_tei_shapes(rerank_server: RunningServer, local: Reranker) -> None:
    assert assert_tei_error(post(rerank_server, "/rerank", {"query": QUERY, "texts": []}), 400, "Empty") == (
        "`texts` cannot be empty"  # TEI's words
    )
    assert "`query` cannot be empty" in assert_tei_error(
        post(rerank_server, "/rerank", {"query": "", "texts": ["a"]}), 400, "Empty"
    )
    message = assert_tei_error(post(rerank_server, "/rerank", {"query": QUERY, "texts": TEXTS}), 422, "Validation")
    assert message == f"batch size {len(TEXTS)} > maximum allowed batch size {BATCH}"  # TEI >= 1.9's words
    assert_tei_error(post(rerank_server, "/rerank", {"query": QUERY, "texts": "one"}), 422, "Validation")
    assert_tei_error(post(rerank_server, "/v1/rerank", {"query": QUERY, "documents": []}), 400, "Empty")
    assert_tei_error(post(rerank_server, "/v1/rerank", {"query": QUERY, "documents": TEXTS}), 422, "Validation")

    with TEIClient(rerank_server.url, api_key=API_KEY) as client:
        with pytest.raises(InputError, match="texts is empty"):
            client.rerank(QUERY, [])
        with pytest.raises(InputError, match="query is empty"):
            client.rerank("", ["a"])
    # a client told a larger batch size sends all 7 at once: the server's 422 names its limit, and the client
    # resends in parts of it
    told = ServerInfo("m", "m", max_client_batch_size=100, max_input_length=None)
    with TEIClient(rerank_server.url, api_key=API_KEY, info=told) as client:
        assert_same_ranking(client.rerank(QUERY, TEXTS), local.rerank(QUERY, TEXTS))


def test_a_reranker_is_not_an_embedder(rerank_server: RunningServer) -> None:
    for path in ("/embed", "/embed_sparse"):
        message = assert_tei_error(post(rerank_server, path, {"inputs": "x"}), 424, "Backend")
        assert message == "Backend error: Model is not an embedding model"  # TEI's words
    assert_tei_error(post(rerank_server, "/v1/embeddings", {"input": "x"}), 424, "Backend")
    metrics = httpx.get(f"{rerank_server.url}/metrics").text  # counted as TEI does: no backend failed
    assert 'te_request_failure{err="model_type"}' in metrics and 'err="backend"' not in metrics
    with TEIClient(rerank_server.url, api_key=API_KEY) as client:
        with pytest.raises(RemoteError, match=r"a reranker .*not an embedding model: embed cannot run there"):
            client.embed(["x"])
    told = ServerInfo("m", "m", max_client_batch_size=8, max_input_length=None)  # no model_type: the server says
    with TEIClient(rerank_server.url, api_key=API_KEY, info=told) as client:
        with pytest.raises(RemoteError, match="424: Backend error: Model is not an embedding model") as caught:
            client.embed(["x"])
    assert caught.value.status == 424


def test_an_embedder_is_not_a_reranker(server: RunningServer) -> None:
    message = assert_tei_error(post(server, "/rerank", {"query": "q", "texts": ["a"]}), 424, "Backend")
    assert message == "Backend error: model is not a re-ranker model"  # TEI's words
    assert_tei_error(post(server, "/v1/rerank", {"query": "q", "documents": ["a"]}), 424, "Backend")
    assert 'te_request_failure{err="model_type"}' in httpx.get(f"{server.url}/metrics").text
    with TEIClient(server.url, api_key=API_KEY) as client:
        with pytest.raises(RemoteError, match=r"an embedding model .*not a reranker: rerank cannot run there"):
            client.rerank("q", ["a"])
    told = ServerInfo("m", "m", max_client_batch_size=8, max_input_length=None)
    with TEIClient(server.url, api_key=API_KEY, info=told) as client:
        with pytest.raises(RemoteError, match="424: Backend error: model is not a re-ranker model") as caught:
            client.rerank("q", ["a"])
    assert caught.value.status == 424


def test_langchain_rerank_through_the_server(rerank_server: RunningServer, local: Reranker) -> None:
    """EmbedkitRerank(url=...) (the LangChain package) over this server keeps the local reranker's order."""
    langchain_embedkit = pytest.importorskip("langchain_embedkit")
    from langchain_core.documents import Document

    documents = [Document(id=str(i), page_content=text) for i, text in enumerate(TEXTS)]
    expected = local.rerank(QUERY, TEXTS, top_k=3)
    compressor = langchain_embedkit.EmbedkitRerank(url=rerank_server.url, api_key=API_KEY, top_n=3)
    for kept in (
        compressor.compress_documents(documents, QUERY),
        asyncio.run(compressor.acompress_documents(documents, QUERY)),
    ):
        assert [doc.id for doc in kept] == [str(r.index) for r in expected]
        assert [doc.metadata["relevance_score"] for doc in kept] == pytest.approx([r.score for r in expected], abs=1e-6)


def test_a_qwen3_reranker_is_served_on_rerank(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`embedkit serve` of a Qwen3-Reranker folder (told apart from Qwen3-Embedding by its weights) answers
    /rerank with the local reranker's scores, and /info says reranker."""
    from ..rerank.test_qwen3_reranker import write_reranker
    from .conftest import start_server, stop_server

    model_dir = write_reranker(tmp_path_factory.mktemp("qwen3-reranker"), tied=True, seed=3)
    local = embedkit.load_reranker(model_dir, device="cpu")
    running = start_server(tmp_path_factory.mktemp("serve-qwen3"), str(model_dir), api_key=None)
    try:
        info = httpx.get(f"{running.url}/info", timeout=30).json()
        assert "reranker" in info["model_type"]
        documents = ["Bees cluster to keep warm.", "Git branches are pointers.", "The hive stays at 35 C."]
        response = httpx.post(f"{running.url}/rerank", json={"query": "bees in winter", "texts": documents}, timeout=60)
        assert response.status_code == 200, response.text
        served = [RerankResult(rank["index"], rank["score"]) for rank in response.json()]
        assert_same_ranking(served, local.rerank("bees in winter", documents))
    finally:
        stop_server(running)
