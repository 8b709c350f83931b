"""`embedkit ingest` and `search` through a remote embedder: TEI's API and an OpenAI-style /v1 service
(here a real `embedkit serve` on 127.0.0.1), with chunk tokens counted by a local tokenizer where the
service has no /tokenize."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import API_KEY, RunningServer


def embedkit(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    exe = shutil.which("embedkit", path=str(Path(sys.executable).parent))
    assert exe, f"the embedkit console script is installed beside {sys.executable}"
    env = {**os.environ, "EMBEDKIT_API_KEY": API_KEY}
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_ingest_and_search_through_an_openai_style_service(
    server: RunningServer, minilm_dir: Path, example_docs: Path, tmp_path: Path
) -> None:
    v1 = f"{server.url}/v1"
    openai = ("--tei-url", v1, "--api", "openai", "--model-name", "all-MiniLM-L6-v2")
    done = embedkit(tmp_path, "ingest", str(example_docs), "--collection", "kb", "--quiet", *openai,
                    "--tokenizer", str(minilm_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "20 docs (20 embedded" in done.stdout
    found = embedkit(tmp_path, "search", "how do I reset my password", "--collection", "kb", "-k", "1", *openai)
    assert found.returncode == 0, found.stderr
    assert "password-reset.md" in found.stdout.splitlines()[0]
    # variant: the same collection searched through TEI's own API and locally: the same vectors, so allowed
    tei = embedkit(tmp_path, "search", "forgot my password", "--collection", "kb", "-k", "1", "--tei-url", server.url)
    local = embedkit(tmp_path, "search", "forgot my password", "--collection", "kb", "-k", "1")
    assert tei.returncode == local.returncode == 0, tei.stderr + local.stderr
    assert tei.stdout.splitlines()[0] == local.stdout.splitlines()[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--api", "openai"), "--api goes with --tei-url"),
        (("--model-name", "x"), "--model-name goes with --tei-url"),
        (("--engine", "ray", "--tokenizer", "x"), "drop --tei-url / --tokenizer"),
    ],
)
def test_remote_options_are_checked(
    tmp_path: Path, example_docs: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    from embedkit.cli import main

    code = main(["ingest", str(example_docs), "--collection", "kb", "--qdrant-path", str(tmp_path / "q"), *args])
    assert code == 1 and message in capsys.readouterr().err
