"""QdrantSink's lifecycle: close, `with`, and a quiet interpreter exit for scripts that never close.

qdrant-client's QdrantLocal.close imports portalocker lazily; a local client still open when the
interpreter tears its modules down printed 'Exception ignored in: QdrantClient.__del__ ... sys.meta_path
is None' on every exit. Scripts run in a subprocess, since that message only appears at exit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from embedkit.errors import InputError, StoreError
from embedkit.sinks import QdrantSink


def run_script(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def assert_quiet(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def opens_in_another_process(path: Path) -> bool:
    """Whether another process can open the local store now (qdrant-client locks the folder)."""
    code = f"from qdrant_client import QdrantClient; QdrantClient(path={str(path)!r}).close()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0


def test_script_that_never_closes_exits_quietly(tmp_path: Path) -> None:
    result = run_script(
        f"""
        from embedkit.sinks import QdrantSink
        sink = QdrantSink("kb", path={str(tmp_path / "q")!r})
        sink.prepare(4, {{"model_id": "test"}})
        again = QdrantSink("other", path={str(tmp_path / "q")!r})  # the same shared client
        second = QdrantSink("kb", path={str(tmp_path / "q2")!r})
        print(sink.exists(), again.exists())
        """,
        tmp_path,
    )
    assert_quiet(result)
    assert result.stdout.split() == ["True", "False"]


def test_script_that_ingests_and_never_closes_exits_quietly(tmp_path: Path) -> None:
    result = run_script(
        f"""
        import embedkit
        from embedkit.ingestion import ingest
        from embedkit.sinks import QdrantSink
        sink = QdrantSink("kb", path={str(tmp_path / "q")!r})
        report = ingest(["bees make honey", "git branches"], embedkit.load(device="cpu"), sink, progress=False)
        print(report.embedded, sink.count())
        """,
        tmp_path,
    )
    assert_quiet(result)
    assert result.stdout.split() == ["2", "2"]


def test_script_with_context_manager_exits_quietly_and_frees_the_path(tmp_path: Path) -> None:
    store = tmp_path / "q"
    result = run_script(
        f"""
        import subprocess, sys
        from embedkit.sinks import QdrantSink
        with QdrantSink("kb", path={str(store)!r}) as sink:
            sink.prepare(4, {{"model_id": "test"}})
        # the path is free for another process while this one still runs
        code = "from qdrant_client import QdrantClient; QdrantClient(path={str(store)!r}).close()"
        print(subprocess.run([sys.executable, "-c", code]).returncode)
        """,
        tmp_path,
    )
    assert_quiet(result)
    assert result.stdout.strip() == "0"


def test_close_is_idempotent_and_a_closed_sink_says_so(tmp_path: Path) -> None:
    with QdrantSink("kb", path=tmp_path / "q") as sink:
        sink.prepare(4, {"model_id": "test"})
        assert sink.count() == 0
    sink.close()  # again: nothing to do
    with pytest.raises(StoreError, match=r"QdrantSink of collection 'kb' at .* is closed"):
        sink.exists()
    with pytest.raises(StoreError, match="is closed"):
        sink.count()
    assert opens_in_another_process(tmp_path / "q")


def test_closing_a_stale_sink_leaves_a_reopened_path_open(tmp_path: Path) -> None:
    first = QdrantSink("kb", path=tmp_path / "q")
    second = QdrantSink("kb", path=tmp_path / "q")  # shares first's client
    first.prepare(4, {"model_id": "test"})
    first.close()  # closes the shared client for both
    reopened = QdrantSink("kb", path=tmp_path / "q")
    try:
        second.close()  # its client is already closed; must not close the reopened one
        assert reopened.exists() and reopened.count() == 0
    finally:
        reopened.close()


def test_a_given_client_stays_open(tmp_path: Path) -> None:
    client = QdrantClient(location=":memory:")
    with QdrantSink("kb", client=client) as sink:
        sink.prepare(4, {"model_id": "test"})
    assert client.collection_exists("kb")  # the caller's client, still usable
    client.close()


@pytest.mark.parametrize(
    ("name", "refusal"),
    [("a/b", "cannot contain '/'"), ("x" * 300, "at most 255 characters"), ("a:b", "cannot contain ':'")],
)
def test_collection_name_the_local_store_refuses(tmp_path: Path, name: str, refusal: str) -> None:
    with pytest.raises(InputError, match=f"collection name .* is refused by the Qdrant store at {tmp_path}.*{refusal}"):
        QdrantSink(name, path=tmp_path)
    with pytest.raises(InputError, match=refusal):
        QdrantSink(name, location=":memory:")


def test_store_path_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "store"
    target.write_text("not a store")
    with pytest.raises(StoreError, match=f"store at {target}: it is a file, not a directory"):
        QdrantSink("kb", path=target)
    with pytest.raises(StoreError, match=f"store at {target / 'sub'}: {target} is a file, not a directory"):
        QdrantSink("kb", path=target / "sub")
