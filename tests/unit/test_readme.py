"""README's first two code blocks are the install+main job and the test command CI runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _code_blocks() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S)


def test_first_two_blocks_are_bash_commands() -> None:
    (lang1, install), (lang2, tests) = _code_blocks()[:2]
    assert lang1 == lang2 == "bash"
    assert "pip install torch==2.13.0" in install.split("&&")[2]
    assert "embedkit ingest examples/docs" in install and "embedkit search" in install
    assert "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = _code_blocks()[1][1].strip()
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci.splitlines()


def test_python_quickstart_runs(tmp_path, monkeypatch, capsys) -> None:
    import shutil

    quickstart = next(code for lang, code in _code_blocks() if lang == "python")
    shutil.copytree(REPO / "examples" / "docs", tmp_path / "examples" / "docs")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(quickstart, "README.md", "exec"), namespace)
    namespace["sink"].close()
    output = capsys.readouterr().out
    assert "20 docs (20 embedded" in output
    assert (tmp_path / "qdrant").is_dir()
