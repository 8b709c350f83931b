"""ruff (with its RUF rules) and mypy over the package, as part of the test run: a type or lint error is a failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)


def test_ruff_is_clean() -> None:
    result = _run(sys.executable, "-m", "ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_is_clean(tmp_path: Path) -> None:
    # pyproject.toml's [tool.mypy] holds the settings; a fresh cache per run keeps the result honest
    result = _run(sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy"), "embedkit")
    assert result.returncode == 0, result.stdout + result.stderr
