"""Which engine runs the model: torch, or ONNX Runtime over embedkit's own exported graph.

ONNX Runtime is the CPU fast path (float32 on CPU only, extra `onnx`); torch is the reference and the
fallback. `choose_backend` settles the user's request against the device, dtype and installed
extras; `onnx_runner` wraps a built torch module for ONNX Runtime, or hands it back when "auto"
cannot export it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from embedkit.errors import InputError, ModelLoadError
from embedkit.models.base import EmbeddingModel, EncoderModel
from embedkit.models.registry import Family
from embedkit.onnx.cache import GraphCache
from embedkit.onnx.model import OnnxModel, import_onnxruntime
from embedkit.tasks import TaskTable
from embedkit.weights import weights_digest

__all__ = ["BACKENDS", "BACKEND_ENV", "choose_backend", "onnx_runner"]

log = logging.getLogger(__name__)

BACKEND_ENV = "EMBEDKIT_BACKEND"
BACKENDS = ("auto", "torch", "onnx")


def choose_backend(
    backend: str | None, quantize: str | None, device: torch.device, dtype: torch.dtype
) -> tuple[str, bool]:
    """("torch" or "onnx", whether ONNX was asked for outright). An outright "onnx" or int8 that cannot
    be is an error; "auto" settles for torch."""
    where = "backend"
    if backend is None and quantize is not None:
        backend = "onnx"  # asked for outright; the environment's default backend does not overrule it
    elif backend is None:
        backend, where = os.environ.get(BACKEND_ENV, "auto"), f"${BACKEND_ENV}"
    if backend not in BACKENDS:
        raise InputError(f"{where}={backend!r}: expected one of {', '.join(BACKENDS)}")
    if quantize not in (None, "int8"):
        raise InputError(f"quantize={quantize!r}: expected None or 'int8'")
    if quantize is not None and backend == "torch":
        raise InputError("quantize='int8' runs on the ONNX backend; use backend='onnx' or 'auto'")
    required = backend == "onnx" or quantize is not None
    if device.type != "cpu" or dtype != torch.float32:
        if required:
            raise InputError(
                f"the ONNX backend runs float32 on the CPU (asked: device={str(device)!r}, dtype={dtype}); "
                "use backend='torch' for other devices and dtypes"
            )
        return "torch", False
    if backend == "torch":
        return "torch", False
    try:
        import_onnxruntime()
    except ImportError as exc:  # MissingDependencyError says which package and the pip command
        if required:
            raise
        log.info("backend auto: torch (%s)", exc)
        return "torch", False
    return "onnx", required


def onnx_runner(
    module: EncoderModel,
    family: Family,
    model_dir: Path,
    table: TaskTable,
    default_task: str | None,
    quantize: str | None,
    cache_dir: str | os.PathLike[str] | None,
    *,
    pooling: Sequence[str],
    dense: nn.Module | None,
    required: bool,
) -> EmbeddingModel:
    """The module wrapped for ONNX Runtime, its first graph ready (pooling with `pooling` and projecting
    with `dense` inside the graph); unless `required`, torch if it will not export."""
    first_adapter = table.adapter(default_task) if default_task is not None and table.adapters else -1
    try:
        runner = OnnxModel(
            module,
            family=family.name,
            model_dir=model_dir,
            weights_digest=weights_digest(model_dir),
            pooling=pooling,
            dense=dense,
            quantize=quantize,
            cache=GraphCache(cache_dir),
        )
        runner.prepare(first_adapter)
    except ModelLoadError as exc:
        if required:
            raise
        log.warning("backend auto: %s; running on torch instead", exc)
        return module
    log.info("%s: running on ONNX Runtime%s, %d threads", model_dir, f" {quantize}" if quantize else "", runner.threads)
    return runner
