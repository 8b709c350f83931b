"""QdrantSink's lifecycle on both embedded engines (Qdrant Edge, qdrant-client's local mode): close, `with`,
and a quiet interpreter exit for scripts that never close.

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


ENGINES = pytest.mark.parametrize("engine", ["edge", "client-local"])


def opening_code(path: Path, engine: str) -> str:
    """A one-liner opening collection kb of the store at `path` in another process (both engines lock it)."""
    return (
        f"from embedkit.sinks import QdrantSink; "
        f"QdrantSink('kb', path={str(path)!r}, engine={engine!r}).exists(); print('opened')"
    )


def opens_in_another_process(path: Path, engine: str) -> bool:
    """Whether another process can open the embedded store now."""
    run = subprocess.run([sys.executable, "-c", opening_code(path, engine)], capture_output=True, timeout=120)
    return run.returncode == 0


@ENGINES
def test_script_that_never_closes_exits_quietly(tmp_path: Path, engine: str) -> None:
    result = run_script(
        f"""
        from embedkit.sinks import QdrantSink
        sink = QdrantSink("kb", path={str(tmp_path / "q")!r}, engine={engine!r})
        sink.prepare(4, {{"model_id": "test"}})
        again = QdrantSink("other", path={str(tmp_path / "q")!r}, engine={engine!r})  # the same store
        second = QdrantSink("kb", path={str(tmp_path / "q2")!r}, engine={engine!r})
        print(sink.exists(), again.exists())
        """,
        tmp_path,
    )
    assert_quiet(result)
    assert result.stdout.split() == ["True", "False"]


@ENGINES
def test_script_that_ingests_and_never_closes_exits_quietly(tmp_path: Path, engine: str) -> None:
    result = run_script(
        f"""
        import embedkit
        from embedkit.ingestion import ingest
        from embedkit.sinks import QdrantSink
        sink = QdrantSink("kb", path={str(tmp_path / "q")!r}, engine={engine!r})
        report = ingest(["bees make honey", "git branches"], embedkit.load(device="cpu"), sink, progress=False)
        print(report.embedded, sink.count())
        """,
        tmp_path,
    )
    assert_quiet(result)
    assert result.stdout.split() == ["2", "2"]


@ENGINES
def test_script_with_context_manager_exits_quietly_and_frees_the_path(tmp_path: Path, engine: str) -> None:
    store = tmp_path / "q"
    result = run_script(
        f"""
        import subprocess, sys
        from embedkit.sinks import QdrantSink
        with QdrantSink("kb", path={str(store)!r}, engine={engine!r}) as sink:
            sink.prepare(4, {{"model_id": "test"}})
            held = subprocess.run([sys.executable, "-c", {opening_code(store, engine)!r}], capture_output=True)
        # the path is free for another process while this one still runs
        free = subprocess.run([sys.executable, "-c", {opening_code(store, engine)!r}], capture_output=True, text=True)
        print(held.returncode, free.returncode, free.stdout.strip())
        """,
        tmp_path,
    )
    assert_quiet(result)
    assert result.stdout.split() == ["1", "0", "opened"]


@ENGINES
def test_close_is_idempotent_and_a_closed_sink_says_so(tmp_path: Path, engine: str) -> None:
    with QdrantSink("kb", path=tmp_path / "q", engine=engine) as sink:
        sink.prepare(4, {"model_id": "test"})
        assert sink.count() == 0
    sink.close()  # again: nothing to do
    with pytest.raises(StoreError, match=r"QdrantSink of collection 'kb' at .* is closed"):
        sink.exists()
    with pytest.raises(StoreError, match="is closed"):
        sink.count()
    assert opens_in_another_process(tmp_path / "q", engine)


@ENGINES
def test_closing_a_stale_sink_leaves_a_reopened_path_open(tmp_path: Path, engine: str) -> None:
    first = QdrantSink("kb", path=tmp_path / "q", engine=engine)
    second = QdrantSink("kb", path=tmp_path / "q", engine=engine)  # shares first's client
    first.prepare(4, {"model_id": "test"})
    first.close()  # closes the shared client for both
    reopened = QdrantSink("kb", path=tmp_path / "q", engine=engine)
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
    for engine in ("edge", "client-local"):
        where = tmp_path / engine
        with pytest.raises(
            InputError, match=f"collection name .* is refused by the Qdrant store at {where}.*{refusal}"
        ):
            QdrantSink(name, path=where, engine=engine)
    with pytest.raises(InputError, match=refusal):
        QdrantSink(name, location=":memory:")


@ENGINES
def test_store_path_that_is_a_file(tmp_path: Path, engine: str) -> None:
    target = tmp_path / "store"
    target.write_text("not a store")
    with pytest.raises(StoreError, match=f"store at {target}: it is a file, not a directory"):
        QdrantSink("kb", path=target, engine=engine)
    with pytest.raises(StoreError, match=f"store at {target / 'sub'}: {target} is a file, not a directory"):
        QdrantSink("kb", path=target / "sub", engine=engine)
