"""`embedkit search --filter` matches values as JSON stored them, reaches doc_id and source, names unknown keys,
and shows points another tool wrote; QdrantSink.search keeps its typed filter values.

One store for the module: two sources ingested by embedkit with metadata of mixed types, plus two
points langchain-qdrant's add_texts wrote (page_content and metadata only). The CLI runs in-process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedkit.cli import main
from embedkit.errors import InputError
from embedkit.ingestion import ingest
from embedkit.sinks import QdrantSink

DOCS_A = [  # source "notes/a": the same keys stored with different JSON types
    {
        "id": "bees.md",
        "text": "Honeybees keep warm in winter.",
        "metadata": {"year": "2024", "draft": True, "score": 0.5},
    },
    {
        "id": "git.md",
        "text": "Git branches are cheap pointers.",
        "metadata": {"year": 2024, "draft": "true", "lang": "en"},
    },
    {
        "id": "coffee.md",
        "text": "Brew coffee at 93 degrees.",
        "metadata": {"year": 2023, "draft": False, "score": 0.25},
    },
    {"id": "tea.md", "text": "Green tea wants cooler water.", "metadata": {"year": "2023", "score": 1, "lang": "de"}},
]
DOCS_B = [{"id": "bees.md", "text": "Wild bees nest in the ground.", "metadata": {"lang": "en"}}]
FOREIGN = ["Bumblebees can fly in the cold.", "A page about bee hotels."]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, minilm) -> Path:
    from langchain_embedkit import EmbedkitEmbeddings, qdrant_vector_store

    path = tmp_path_factory.mktemp("filters") / "qdrant"
    # qdrant-client's local mode, which langchain-qdrant opens too (test_edge_sink runs these filters on Edge);
    # closing the sink closes the client the vector store shares
    with QdrantSink("kb", path=path, engine="client-local") as sink:
        ingest(DOCS_A, minilm, sink, source="notes/a", progress=False)
        ingest(DOCS_B, minilm, sink, source="notes/b", progress=False)
        store = qdrant_vector_store("kb", path=str(path), embeddings=EmbedkitEmbeddings(embedder=minilm))
        store.add_texts(FOREIGN, metadatas=[{"source": "web/bumblebees.html"}, {"topic": "bees"}])
    return path


def search(store: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["search", "bees", "--collection", "kb", "--qdrant-path", str(store), "-k", "20", *args])
    out, err = capsys.readouterr()
    return status, out, err


def found(store: Path, capsys: pytest.CaptureFixture[str], *filters: str) -> set[str]:
    """The doc ids `--filter` keeps (a point without one counts by its page_content)."""
    args = [part for value in filters for part in ("--filter", value)]
    status, out, err = search(store, capsys, "--json", *args)
    assert status == 0, err
    return {hit.get("doc_id") or hit["page_content"] for hit in map(json.loads, out.splitlines())}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["year=2024"], {"notes/a/bees.md", "notes/a/git.md"}),  # "2024" and 2024
        (["year=2023"], {"notes/a/coffee.md", "notes/a/tea.md"}),
        (["draft=true"], {"notes/a/bees.md", "notes/a/git.md"}),  # true and "true"
        (["draft=FALSE"], {"notes/a/coffee.md"}),
        (["score=0.5"], {"notes/a/bees.md"}),
        (["score=1"], {"notes/a/tea.md"}),
        (["score=1.0"], {"notes/a/tea.md"}),  # a decimal matches an integer equal to it
        (["year=2023", "year=2024"], {f"notes/a/{doc['id']}" for doc in DOCS_A}),  # a key twice: either
        (["year=2024", "draft=true", "lang=en"], {"notes/a/git.md"}),
    ],
)
def test_values_match_what_json_stored(
    store: Path, capsys: pytest.CaptureFixture[str], filters: list[str], expected: set[str]
) -> None:
    assert found(store, capsys, *filters) == expected


def test_doc_id_and_source_reach_embedkits_fields(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert found(store, capsys, "source=notes/b") == {"notes/b/bees.md"}
    assert found(store, capsys, "doc_id=notes/a/bees.md") == {"notes/a/bees.md"}
    assert found(store, capsys, "doc_id=notes/a/bees.md", "doc_id=notes/b/bees.md") == {
        "notes/a/bees.md",
        "notes/b/bees.md",
    }
    # metadata.KEY is the metadata key alone, even when it shares a name with embedkit's field
    assert found(store, capsys, "metadata.source=web/bumblebees.html") == {FOREIGN[0]}
    assert found(store, capsys, "metadata.lang=en", "source=notes/a") == {"notes/a/git.md"}


def test_unknown_key_is_named_instead_of_no_results(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = search(store, capsys, "--filter", "yeer=2024")
    assert status == 1 and not out
    assert err.strip() == (
        "embedkit search: error: no point in collection 'kb' has metadata key 'yeer' "
        "(keys seen: draft, lang, score, source, topic, year)"
    )
    status, _, err = search(store, capsys, "--filter", "metadata.doc_id=notes/a/bees.md", "--filter", "lang=en")
    assert status == 1 and "has metadata key 'doc_id' (keys seen:" in err and "Traceback" not in err
    # a key some point has, with a value none has: an empty result, as before
    status, out, err = search(store, capsys, "--filter", "year=1999")
    assert status == 0 and not out and err.strip() == "no results"
    # plain source reaches both embedkit's field and the metadata key LangChain readers fill in
    assert found(store, capsys, "source=web/bumblebees.html") == {FOREIGN[0]}


def test_foreign_points_show_their_id_and_source(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = search(store, capsys, "--filter", "topic=bees")
    assert status == 0, err
    first = out.splitlines()[0]
    assert first.startswith("1. ") and "None" not in first and "[chunk" not in first
    assert "point " in first and "bee hotels" in out.splitlines()[1]
    status, out, _ = search(store, capsys, "--filter", "metadata.source=web/bumblebees.html")
    assert status == 0 and "(source web/bumblebees.html)" in out.splitlines()[0]
    status, out, _ = search(store, capsys, "--filter", "source=notes/b")
    assert out.splitlines()[0].endswith("  notes/b/bees.md [chunk 0]")  # embedkit's own points as before


def test_python_api_keeps_typed_values(store: Path, minilm) -> None:
    vector = minilm.embed_query("bees")
    with QdrantSink("kb", path=store) as sink:

        def doc_ids(metadata_filter: dict) -> set[str | None]:
            return {hit.payload.get("doc_id") for hit in sink.search(vector, 20, metadata_filter=metadata_filter)}

        assert doc_ids({"year": 2024}) == {"notes/a/git.md"}  # an int finds only the integer
        assert doc_ids({"year": "2024"}) == {"notes/a/bees.md"}
        assert doc_ids({"year": ["2024", 2024]}) == {"notes/a/bees.md", "notes/a/git.md"}  # a mixed list
        assert doc_ids({"draft": True}) == {"notes/a/bees.md"}
        assert doc_ids({"score": 0.25}) == {"notes/a/coffee.md"}
        assert doc_ids({"source": ["notes/b"], "lang": "en"}) == {"notes/b/bees.md"}
        with pytest.raises(InputError, match=r"metadata key 'colour' \(keys seen: draft, lang"):
            sink.search(vector, 3, metadata_filter={"colour": "red"})
        with pytest.raises(InputError, match="match a str, int, bool, finite float"):
            sink.search(vector, 3, metadata_filter={"score": float("nan")})
