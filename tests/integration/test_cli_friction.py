"""What a first-time user of the `embedkit` command trips over: flags, help, version, progress, repeated output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from embedkit.cli import _parser, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"embedkit {version('embedkit')}"


def test_serve_help_names_its_defaults_and_auto_truncate_takes_an_optional_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 8080)" in text and "--auto-truncate [{true,false}]" in text and "--no-auto-truncate" in text
    parse = _parser().parse_args
    assert parse(["serve"]).auto_truncate == "true"
    assert parse(["serve", "--auto-truncate"]).auto_truncate == "true"  # a plain flag, as the help shows it
    assert parse(["serve", "--auto-truncate", "false"]).auto_truncate == "false"
    assert parse(["serve", "--no-auto-truncate"]).auto_truncate == "false"


def test_skip_reasons_are_printed_once(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text("Good text about rivers.")
    (docs / "latin1.txt").write_bytes("Café".encode("latin-1"))
    exe = shutil.which("embedkit", path=str(Path(sys.executable).parent))
    assert exe
    done = subprocess.run([exe, "ingest", "docs", "--collection", "kb", "--quiet", "--on-error", "skip"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("not UTF-8 text") == 1, done.stderr
    assert "1 skipped" in done.stdout


def test_the_progress_bar_has_a_total_a_rate_and_what_was_stored(
    minilm, example_docs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from embedkit.ingestion import ingest, load_directory
    from embedkit.sinks import QdrantSink

    docs = list(load_directory(example_docs))
    with QdrantSink("kb", location=":memory:") as sink:
        ingest(docs, minilm, sink, progress=True)
        bar = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]
        assert "20/20" in bar and "doc/s" in bar and "44 chunks" in bar and "tokens/s" in bar, bar
        ingest(iter(docs), minilm, sink, progress=True, total=20)  # a generator, with the total given
        assert "20/20" in capsys.readouterr().err
