"""A store the `embedkit` command cannot use is one line, `embedkit <cmd>: error: ...` naming it, exit status 1;
an ingest stopped by Ctrl-C is one line saying what it stored, exit status 130, and running it again resumes.

The real console script in a subprocess, so a traceback anywhere (including at exit) would show.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("embedkit", path=str(Path(sys.executable).parent))
    assert exe, f"the embedkit console script is installed beside {sys.executable}"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_one_line(result: subprocess.CompletedProcess[str], command: str, *expected: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"embedkit {command}: error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def store_args(tmp_path: Path, example_docs: Path, command: str, store: Path, collection: str = "kb") -> list[str]:
    docs = tmp_path / "docs"
    if not docs.exists():
        docs.mkdir()
        shutil.copy(example_docs / "honeybees.md", docs)
    head = ["ingest", str(docs), "--quiet"] if command == "ingest" else ["search", "bees"]
    return [*head, "--collection", collection, "--qdrant-path", str(store)]


@pytest.mark.parametrize("command", ["ingest", "search"])
def test_store_path_is_a_file(tmp_path: Path, example_docs: Path, command: str) -> None:
    target = tmp_path / "qdrant"
    target.write_text("my notes, not a store")
    result = run(tmp_path, *store_args(tmp_path, example_docs, command, target))
    assert_one_line(result, command, f"store at {target}: it is a file, not a directory")
    assert target.read_text() == "my notes, not a store"
    below = run(tmp_path, *store_args(tmp_path, example_docs, command, target / "sub"))
    if command == "ingest":
        assert_one_line(below, command, f"store at {target / 'sub'}: {target} is a file, not a directory")
    else:  # search never creates a store, so one that is not there is named as missing
        assert_one_line(below, command, f"no Qdrant store at {target / 'sub'}")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into a 0o555 directory regardless"
)
@pytest.mark.parametrize("command", ["ingest", "search"])
def test_store_in_a_read_only_directory(tmp_path: Path, example_docs: Path, command: str) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for store in (locked / "qdrant", locked):  # a store to create inside it, or the directory itself
            result = run(tmp_path, *store_args(tmp_path, example_docs, command, store))
            assert_one_line(result, command, f"cannot open the embedded Qdrant store at {store}", "not writable")
    finally:
        locked.chmod(0o755)


def test_store_where_not_even_root_can_write(tmp_path: Path, example_docs: Path) -> None:
    # sysfs refuses new entries to every user: the read-only case that also holds when tests run as root
    store = Path("/sys/embedkit-test-store")
    try:
        store.mkdir()
    except OSError:
        pass
    else:
        store.rmdir()
        pytest.skip("/sys accepts new directories here, so no place refuses root")
    result = run(tmp_path, *store_args(tmp_path, example_docs, "ingest", store))
    assert_one_line(result, "ingest", f"cannot open the embedded Qdrant store at {store}")
    # search creates nothing: a store that is not there is named as missing
    result = run(tmp_path, *store_args(tmp_path, example_docs, "search", store))
    assert_one_line(result, "search", f"no Qdrant store at {store}; ingest first")


@pytest.mark.parametrize(
    ("collection", "refusal"),
    [
        ("team/kb", "cannot contain '/'"),
        ("kb:v2", "cannot contain ':'"),
        ("k" * 300, "at most 255 characters"),
    ],
)
@pytest.mark.parametrize("command", ["ingest", "search"])
def test_collection_name_qdrant_refuses(
    tmp_path: Path, example_docs: Path, command: str, collection: str, refusal: str
) -> None:
    store = tmp_path / "qdrant"
    store.mkdir()  # an existing store, so that search opens it (it never creates one)
    result = run(tmp_path, *store_args(tmp_path, example_docs, command, store, collection))
    assert_one_line(result, command, "collection name", f"is refused by the Qdrant store at {store}", refusal)


def stored_points(store: Path, collection: str) -> int:
    """Points the embedded store has committed, read while another process writes it. qdrant-client's local
    mode keeps a collection in one SQLite file; reading it (not opening the store, which the writer locks)
    is how this test knows the run is mid-write."""
    database = store / "collection" / collection / "storage.sqlite"
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute("SELECT count(*) FROM points").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet, or locked for a moment by the writer
        return 0


@pytest.mark.slow
def test_ctrl_c_mid_ingest_says_what_is_stored_and_rerun_resumes(tmp_path: Path, example_docs: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for copy in range(4):  # 80 docs: several embedding batches, so a write lands long before the end
        for source in sorted(example_docs.glob("*.md")):
            (docs / f"{copy}-{source.name}").write_text(f"# Copy {copy}\n\n{source.read_text()}")
    total = len(list(docs.iterdir()))
    store = tmp_path / "qdrant"
    exe = shutil.which("embedkit", path=str(Path(sys.executable).parent))
    assert exe
    command = [exe, "ingest", str(docs), "--collection", "kb", "--qdrant-path", str(store), "--quiet"]
    env = {**os.environ, "EMBEDKIT_BACKEND": "torch"}
    run = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600  # a generous bound for a loaded 2-core machine, not a timing check
        while run.poll() is None and stored_points(store, "kb") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if run.poll() is not None:
            _, err = run.communicate()
            assert run.returncode == 0, err
            pytest.skip("the ingest finished before it could be interrupted mid-run (a fast machine)")
        assert stored_points(store, "kb") > 0, "nothing was written within 10 minutes"
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    stored = re.fullmatch(
        r"embedkit ingest: interrupted; (\d+) docs stored complete before it stopped "
        r"\(\d+ docs \((\d+) embedded, .*\); run the same command again to resume where it stopped",
        lines[0],
    )
    assert stored and stored.group(1) == stored.group(2), lines[0]
    embedded = int(stored.group(1))
    assert 0 < embedded < total

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    # every doc the interrupted run reported stored is complete, and only the rest is embedded now
    assert f"({total - embedded} embedded, {embedded} unchanged, 0 skipped" in again.stdout, again.stdout


@pytest.mark.parametrize(
    ("command", "line"),
    [
        ("search", "embedkit search: interrupted"),
        # stopped before the pipeline ran (loading the model): no report to tell
        ("ingest", "embedkit ingest: interrupted; run the same command again to resume where it stopped"),
    ],
)
def test_ctrl_c_outside_the_pipeline_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str, line: str
) -> None:
    from embedkit import cli

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._COMMANDS, command, interrupted)
    args = ["ingest", "docs"] if command == "ingest" else ["search", "anything"]
    assert cli.main([*args, "--collection", "kb"]) == 130
    assert capsys.readouterr().err.strip() == line
