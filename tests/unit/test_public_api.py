"""The public surface is explicit, and errors.py stays importable without torch or httpx."""

from __future__ import annotations

import subprocess
import sys

import embedkit


def test_all_is_exact_and_importable() -> None:
    assert sorted(embedkit.__all__) == embedkit.__all__
    for name in embedkit.__all__:
        assert hasattr(embedkit, name), name
    assert set(embedkit.__all__) <= set(dir(embedkit))


def test_errors_import_neither_torch_nor_httpx() -> None:
    code = "import sys, embedkit, embedkit.errors; print(any(m in sys.modules for m in ('torch', 'httpx')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_error_tree() -> None:
    assert issubclass(embedkit.InputError, ValueError)
    assert issubclass(embedkit.UnknownTaskError, embedkit.InputError)
    assert issubclass(embedkit.ModelNotFoundError, embedkit.ModelLoadError)
    for name in ("InputError", "ModelLoadError", "StoreError", "MissingDependencyError"):
        assert issubclass(getattr(embedkit, name), embedkit.EmbedkitError)


def test_ingest_is_the_function_and_ingestion_the_package() -> None:
    import importlib
    import pkgutil
    from pathlib import Path

    import embedkit.ingestion

    # importing every module of the package leaves `embedkit.ingest` the function (no submodule shadows it)
    for module in pkgutil.iter_modules(embedkit.ingestion.__path__):
        importlib.import_module(f"embedkit.ingestion.{module.name}")
    assert callable(embedkit.ingest) and embedkit.ingest is embedkit.ingestion.ingest
    assert not (Path(embedkit.__file__).parent / "ingest.py").exists()
