"""Reading weight files: safetensors single or sharded, header-only inspection, digests.

Format-generic: nothing here knows a model family. Pickled `pytorch_model.bin` is read only when
no safetensors exist and the caller passed `allow_pickle=True`, and then with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from embedkit.errors import ModelLoadError

__all__ = ["load_state_dict", "read_header", "tensor_shapes", "weight_files", "weights_digest"]

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")


def weight_files(model_dir: Path, *, allow_pickle: bool = False) -> list[Path]:
    """The files holding a model's weights, safetensors first."""
    if (model_dir / SINGLE).is_file():
        return [model_dir / SINGLE]
    index = model_dir / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{index}: not a safetensors index with a 'weight_map' ({exc})") from exc
        shards = sorted({model_dir / name for name in weight_map.values()})
        missing = [str(shard) for shard in shards if not shard.is_file()]
        if missing:
            raise ModelLoadError(f"{index} lists shards that do not exist: {', '.join(missing)}")
        return shards
    if (model_dir / PICKLE).is_file():
        if not allow_pickle:
            raise ModelLoadError(
                f"{model_dir} has only pickled weights ({PICKLE}); pass allow_pickle=True to read them "
                "with torch.load(weights_only=True), or convert them to safetensors"
            )
        return [model_dir / PICKLE]
    raise ModelLoadError(f"{model_dir} has no weights: expected {SINGLE}, {INDEX} or {PICKLE}")


def read_header(path: Path) -> dict[str, dict]:
    """The tensor table of one safetensors file (name -> dtype, shape, offsets) without reading data."""
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise ModelLoadError(f"{path}: truncated safetensors file (no header length)")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER_BYTES:
                raise ModelLoadError(f"{path}: safetensors header length {length} is implausible; file corrupted?")
            raw = handle.read(length)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc})") from exc
    if len(raw) != length:
        raise ModelLoadError(f"{path}: truncated safetensors header")
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: safetensors header is not valid JSON ({exc})") from exc
    header.pop("__metadata__", None)
    return header


def tensor_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor name in a model's safetensors files with its shape (empty for pickled weights)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in weight_files(model_dir, allow_pickle=True):
        if path.suffix == ".safetensors":
            shapes.update({name: tuple(info["shape"]) for name, info in read_header(path).items()})
    return shapes


def load_state_dict(model_dir: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a model on the CPU, keyed by their names in the checkpoint."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(model_dir, allow_pickle=allow_pickle):
        try:
            if path.suffix == ".safetensors":
                part = load_file(str(path), device="cpu")
            else:
                part = torch.load(str(path), map_location="cpu", weights_only=True)
        except (SafetensorError, OSError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
            raise ModelLoadError(f"{path}: cannot read weights ({exc})") from exc
        for name, tensor in part.items():
            # a NaN or Inf in the weights turns every vector it touches into NaN: refuse at load time
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ModelLoadError(f"{path}: tensor {name!r} holds NaN or Inf values; the checkpoint is damaged")
        state.update(part)
    return state


def weights_digest(model_dir: Path) -> str:
    """A sha256 over the weight files' contents, so a changed checkpoint changes the fingerprint.

    Files in a Hugging Face cache are links to blobs named by their sha256; that name is used
    instead of rehashing gigabytes.
    """
    digest = hashlib.sha256()
    for path in weight_files(model_dir, allow_pickle=True):
        target = path.resolve()
        if _SHA256_NAME.match(target.name):
            digest.update(target.name.encode())
            continue
        with open(target, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()
