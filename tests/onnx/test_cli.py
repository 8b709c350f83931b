"""The CLI's --backend / --quantize: an int8 collection is searched with int8 queries and not mixed with fp32."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..integration.test_cli import run

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_int8_ingest_search_and_no_silent_mixing(tmp_path: Path, example_docs: Path) -> None:
    first = run(tmp_path, "ingest", str(example_docs), "--collection", "kb", "--quiet", "--quantize", "int8")
    assert first.returncode == 0, first.stderr
    found = run(tmp_path, "-v", "search", "how do I reset my password", "--collection", "kb", "-k", "3")
    assert found.returncode == 0, found.stderr
    assert "password-reset.md" in found.stdout.splitlines()[0]
    assert "running on ONNX Runtime int8" in found.stderr  # the query followed the collection's recorded int8
    # the same docs through fp32 would put other vectors beside the int8 ones: refused, naming the difference
    mixed = run(tmp_path, "ingest", str(example_docs), "--collection", "kb", "--quiet", "--backend", "onnx")
    assert mixed.returncode != 0 and "does not reproduce its vectors" in mixed.stderr
    assert "quantize='int8'" in mixed.stderr and "quantize=None" in mixed.stderr
    assert "Traceback" not in first.stderr + found.stderr + mixed.stderr
