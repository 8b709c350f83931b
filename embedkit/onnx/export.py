"""Exporting embedkit's own torch modules to ONNX (torch's exporter), and the int8 variant of a graph.

The graph computes what the module's `forward_padded` computes, token states [B, T, H]; pooling and
normalisation stay in embedkit's one post-processing path. Its inputs are named and typed as ONNX
embedding graphs usually are (int64 `input_ids`, `attention_mask` and `position_ids`, dynamic batch and
sequence axes), so other ONNX runners can read it too. A family that reads no positions (ALiBi) may
export a graph without `position_ids`; the runner feeds what the graph declares.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from embedkit.models.base import EncoderModel

__all__ = ["FFN_OUTPUT_MODULES", "export_graph", "quantize_int8", "quiet_tools"]

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask", "position_ids")
OUTPUT_NAME = "token_states"
# the feed-forward output projections (`down` in embedkit's encoders, `down_proj` in Qwen): on
# all-MiniLM-L6-v2 they caused most of int8's loss (min cosine vs fp32 0.977 with them quantized)
FFN_OUTPUT_MODULES = ("down", "down_proj")
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # the module path the exporter records on each node


@contextlib.contextmanager
def quiet_tools() -> Iterator[None]:
    """The exporter's and quantiser's progress chatter (hundreds of INFO lines, notes on axis names)
    says nothing to the user: only their errors surface."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx", "")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


class _Exportable(nn.Module):
    """`forward_padded` with the ONNX-conventional int64 mask; adapters, if any, are already merged."""

    def __init__(self, model: EncoderModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.model.forward_padded(input_ids, attention_mask.bool(), position_ids)


def export_graph(model: EncoderModel, path: Path) -> None:
    """Write `model` (eval mode, fp32, CPU) as an ONNX graph at `path`,
    weights in `path`.data."""
    example_ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [5, 6, 7, 8, 9, 0, 0, 0]])
    example_mask = (example_ids != 0).long()
    example_positions = (example_mask.cumsum(dim=1) - 1) * example_mask
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # no autograd: an attention bias computed from a parameter (MPNet's relative positions) would otherwise
    # require grad, the tracer would see another SDPA kernel than inference runs, and record a view of its
    # output that the exporter's decomposed attention cannot take
    with quiet_tools(), torch.no_grad():
        program = torch.onnx.export(
            _Exportable(model).eval(),
            (example_ids, example_mask, example_positions),
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUT_NAMES},
            optimize=True,
            verbose=False,
        )
    if program is None:  # only the legacy (dynamo=False) exporter returns nothing
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    program.save(str(path), external_data=True)  # one layout for every size (protobuf stops at 2 GB)


def quantize_int8(source: Path, target: Path, *, keep_fp32: tuple[str, ...] = FFN_OUTPUT_MODULES) -> list[str]:
    """Dynamic int8 (per-channel weights) of every weight matmul but those in modules named `keep_fp32`.

    Returns the module paths kept in fp32.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False)
    kept: dict[str, str] = {}  # node name -> module path
    for node in graph.graph.node:
        if node.op_type != "MatMul":
            continue
        scopes: list[str] = next((ast.literal_eval(p.value) for p in node.metadata_props if p.key == _NAME_SCOPES), [])
        owner = next((scope for scope in scopes if scope.rsplit(".", 1)[-1] in keep_fp32), None)
        if owner is not None:
            kept[node.name] = owner.removeprefix("model.")  # the export wrapper's attribute
    with quiet_tools():  # the quantiser logs each tensor on the root logger
        quantize_dynamic(
            str(source),
            str(target),
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=list(kept),
            use_external_data_format=True,
        )
    return sorted(set(kept.values()))
