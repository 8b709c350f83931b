"""The README's main job through the real `embedkit` command, in a fresh working directory."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # the script pip installed beside this interpreter, whether or not its venv is on PATH
    exe = shutil.which("embedkit", path=str(Path(sys.executable).parent))
    assert exe, f"the embedkit console script is installed beside {sys.executable}"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_ingest_twice_then_search(tmp_path: Path, example_docs: Path) -> None:
    first = run(tmp_path, "ingest", str(example_docs), "--collection", "kb", "--quiet")
    assert first.returncode == 0, first.stderr
    second = run(tmp_path, "ingest", str(example_docs), "--collection", "kb", "--quiet")
    assert second.returncode == 0, second.stderr
    count = first.stdout.split(";")[-1].split()[0]
    assert int(count) > 20 and second.stdout.split(";")[-1].split()[0] == count
    assert "(0 embedded, 20 unchanged" in second.stdout
    assert (tmp_path / "qdrant").is_dir()

    found = run(tmp_path, "search", "how do I reset my password", "--collection", "kb", "-k", "3")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0].startswith("1. ") and "password-reset.md" in lines[0]
    assert "Traceback" not in found.stderr + first.stderr + second.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ingest", "/nonexistent/docs", "--collection", "kb"), "no such file or directory: /nonexistent/docs"),
        (("search", "anything", "--collection", "absent"), "no Qdrant store at ./qdrant; ingest first"),
        (("ingest", ".", "--collection", "kb", "--model", "/nonexistent/model"), "no such model directory"),
    ],
)
def test_errors_are_one_clear_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = run(tmp_path, *args)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_directory_without_config_is_named(tmp_path: Path, example_docs: Path) -> None:
    result = run(tmp_path, "ingest", str(example_docs), "--collection", "kb", "--model", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path} has no config.json" in result.stderr


def test_models_inspect_says_family_and_why(tmp_path: Path, tiny_bert_dir: Path) -> None:
    import json

    result = run(tmp_path, "models", "inspect", str(tiny_bert_dir), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["family"] == "bert" and info["dimension"] == 32 and info["max_input_tokens"] == 64
    assert info["pooling"] == ["mean"] and info["tasks"] == {"query": "", "document": ""}
    assert any("config.json" in reason for reason in info["detected_by"])
    assert any("tensors" in reason for reason in info["detected_by"])
    text = run(tmp_path, "models", "inspect", str(tiny_bert_dir))
    assert text.returncode == 0 and "family" in text.stdout and "bert" in text.stdout


def test_chunk_size_overlap_and_strategy_options(tmp_path: Path, example_docs: Path) -> None:
    from embedkit.sinks import QdrantSink

    source = tmp_path / "docs"
    source.mkdir()
    shutil.copy(example_docs / "composting.md", source)
    args = ("ingest", str(source), "--quiet", "--qdrant-path", str(tmp_path / "q"))
    small = run(tmp_path, *args, "--collection", "small", "--chunk-tokens", "48", "--overlap", "8")
    default = run(tmp_path, *args, "--collection", "default")
    assert small.returncode == 0 and default.returncode == 0, small.stderr + default.stderr
    assert int(small.stdout.split(";")[-1].split()[0]) > int(default.stdout.split(";")[-1].split()[0])
    sink = QdrantSink("small", path=tmp_path / "q")
    try:
        points = list(sink.points())
    finally:
        sink.close()
    payloads = sorted((p.payload for p in points), key=lambda p: p["chunk_index"])
    text = (source / "composting.md").read_text()
    assert all(text[p["start"] : p["end"]] == p["page_content"] for p in payloads)
    assert payloads[1]["headings"][0] == "Home Composting for Beginners"
    assert any(after["start"] < before["end"] for before, after in itertools.pairwise(payloads))
    bad = run(tmp_path, *args, "--collection", "bad", "--chunk-tokens", "48", "--overlap", "60")
    assert bad.returncode == 1 and "overlap_tokens=60 must be smaller" in bad.stderr


def test_search_filter_and_bulk_upsert_example(tmp_path: Path, example_docs: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "bulk_upsert.py"
    first = subprocess.run(
        [sys.executable, str(example), "--demo"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 0, first.stderr
    assert "embedded                     20" in first.stdout
    again = subprocess.run([sys.executable, str(example)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "unchanged (skipped)          20" in again.stdout
    found = run(tmp_path, "search", "password", "--collection", "kb", "--filter", "source=volcanoes.md", "--json")
    assert found.returncode == 0, found.stderr
    hits = [__import__("json").loads(line) for line in found.stdout.splitlines()]
    assert hits and all(hit["metadata"]["source"] == "volcanoes.md" for hit in hits)
    bad = run(tmp_path, "search", "x", "--collection", "kb", "--filter", "no-equals-sign")
    assert bad.returncode == 1 and "expected KEY=VALUE" in bad.stderr
