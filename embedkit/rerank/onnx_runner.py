"""Cross-encoders on ONNX Runtime: the classifier (encoder + head) exported by torch's exporters (TorchScript
first, then dynamo, each graph checked against torch as embedders' graphs are), cached, and optionally int8.

The graph computes what `SequenceClassifier.forward_padded` computes, logits [B, L], from int64
`input_ids`, `attention_mask`, `token_type_ids` and `position_ids` [B, T] (dynamic batch and sequence
axes; a model that reads no token types may export a graph without that input, and the runner feeds what
the graph declares). Graphs live in the same cache as the embedders' (embedkit/onnx/cache.py), keyed by
the weights, config, family, quantisation and versions; int8 is embedkit/onnx/export.py's dynamic
quantisation (per-tensor int8 weights, the feed-forward output projections kept fp32).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedkit.errors import ModelLoadError
from embedkit.local.batching import TokenBatch
from embedkit.models.classifier import SequenceClassifier
from embedkit.onnx.cache import GraphCache, GraphKey
from embedkit.onnx.export import GRAPH_LAYOUT, example_inputs, export_graph, quantize_int8
from embedkit.onnx.model import import_onnxruntime, intra_op_threads, open_cpu_session
from embedkit.rerank.cross_encoder import PairRunner
from embedkit.weights import weights_digest

__all__ = ["INPUT_NAMES", "OnnxPairRunner", "export_classifier", "onnx_pair_runner"]

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
OUTPUT_NAME = "logits"


class _Exportable(nn.Module):
    """`forward_padded` with the ONNX-conventional int64 mask."""

    def __init__(self, model: SequenceClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        return self.model.forward_padded(input_ids, attention_mask.bool(), position_ids, token_type_ids)


def pair_inputs(lengths: tuple[int, ...], first_segment: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """A right-padded batch of pairs: rows of `lengths` tokens, the first `first_segment` of each type 0."""
    inputs = dict(example_inputs(lengths, (0,) * len(lengths)))
    inputs.pop("prompt_lengths")
    columns = torch.arange(inputs["input_ids"].shape[1])
    types = (columns[None, :] >= torch.tensor(first_segment)[:, None]).long() * inputs["attention_mask"]
    return {
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
        "token_type_ids": types,
        "position_ids": inputs["position_ids"],
    }


def export_classifier(model: SequenceClassifier, path: Path, open_session: Callable) -> str:
    """Write `model` (eval mode, fp32, CPU) as an ONNX graph at `path`, weights in `path`.data, with the
    first of torch's exporters whose graph equals torch (onnx/export.py); returns that exporter's name."""
    return export_graph(
        _Exportable(model).eval(),
        pair_inputs((8, 5), (3, 2)),
        {OUTPUT_NAME: (0,)},
        path,
        open_session,
        [pair_inputs((13, 1, 6), (4, 1, 6))],
    )


class OnnxPairRunner(PairRunner):
    """The exported classifier on ONNX Runtime's CPU provider."""

    backend = "onnx"

    def __init__(self, session: Any, labels: int, quantize: str | None, kept_fp32: list[str]) -> None:
        self.session = session
        self.labels = labels
        self.quantize = quantize
        self.kept_fp32 = kept_fp32
        self.inputs = [arg.name for arg in session.get_inputs()]

    def logits(self, batch: TokenBatch, types: torch.Tensor) -> torch.Tensor:
        view = batch.padded()
        padded_types = torch.zeros_like(view.input_ids)
        padded_types[view.attention_mask] = types
        given = {
            "input_ids": view.input_ids.numpy(),
            "attention_mask": view.attention_mask.numpy().astype(np.int64),
            "token_type_ids": padded_types.numpy(),
            "position_ids": view.position_ids.numpy(),
        }
        out = self.session.run(None, {name: given[name] for name in self.inputs})[0]
        return torch.from_numpy(out).float()


def _embedkit_version() -> str:
    from embedkit import __version__

    return __version__


def onnx_pair_runner(
    module: SequenceClassifier,
    family: str,
    model_dir: Path,
    quantize: str | None,
    cache_dir: str | os.PathLike[str] | None,
    *,
    required: bool,
    fallback: PairRunner,
) -> PairRunner:
    """The classifier on ONNX Runtime (exported once, cached); unless `required`, `fallback` when it will not
    export or load (backend "auto")."""
    ort = import_onnxruntime()
    key = GraphKey(
        weights_digest=weights_digest(model_dir),
        config_digest=hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest(),
        family=f"{family}-classifier",
        adapter="base",
        dtype="float32",
        quantize=quantize or "none",
        embedkit_version=_embedkit_version(),
        torch_version=torch.__version__,
        inputs=",".join(INPUT_NAMES),
        outputs=f"{OUTPUT_NAME};layout={GRAPH_LAYOUT}",
    )

    def open_session(path: Path) -> Any:
        return open_cpu_session(ort, path, intra_op_threads())

    def build(target: Path) -> dict:
        plain = target if not quantize else target.with_name("fp32.onnx")
        try:
            exporter = export_classifier(module.float().cpu().eval(), plain, open_session)
        except Exception as exc:  # every exporter failed; the message names each one's error
            raise ModelLoadError(
                f"the {family} cross-encoder cannot be exported to ONNX ({exc}); use backend='torch'"
            ) from exc
        if not quantize:
            return {"exporter": exporter}
        kept = quantize_int8(plain, target)
        for leftover in target.parent.glob("fp32.onnx*"):
            leftover.unlink()
        return {"exporter": exporter, "kept_fp32": kept}

    try:
        path, manifest = GraphCache(cache_dir).graph(key, build)
        try:
            session = open_session(path)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load the {family} cross-encoder graph ({exc})") from exc
    except ModelLoadError as exc:
        if required:
            raise
        log.warning("backend auto: %s; running on torch instead", exc)
        return fallback
    log.info("%s: cross-encoder on ONNX Runtime%s", model_dir, f" {quantize}" if quantize else "")
    return OnnxPairRunner(session, module.labels, quantize, manifest.get("kept_fp32", []))
