"""Exporting embedkit's own torch modules to ONNX, checking the graph against torch, and its int8 variant.

An embedding graph has two outputs: `token_states` [B, T, H], what the module's `forward_padded`
computes, and `sentence_embedding` [B, D], those states pooled as the model's sentence-transformers
pipeline pools them (prompt tokens left out) and through its Dense projections, so a call that only
wants vectors does no per-token work in Python. L2 normalisation stays outside the graph: it depends on
the request (`normalize`, the Matryoshka cut before it) and costs microseconds per batch.

Inputs are named and typed as ONNX embedding graphs usually are (int64 `input_ids`, `attention_mask`,
`position_ids`, plus `prompt_lengths` [B]; dynamic batch and sequence axes), so other ONNX runners can
read it too. A family that reads no positions (ALiBi) may export a graph without `position_ids`; the
runner feeds what the graph declares.

Two exporters, tried in order (`EXPORTERS`): torch's TorchScript exporter, whose graph of
all-MiniLM-L6-v2 ran 1.09x as fast under ONNX Runtime as the dynamo exporter's (benchmarks/onnx_export.py,
RESULTS.md), then the dynamo exporter for a module the first cannot trace or whose trace is wrong. Each
graph is run on the trace batch and on probe batches and compared with torch before it is kept
(`check_graph`).
"""

from __future__ import annotations

import ast
import contextlib
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedkit.models.base import EncoderModel
from embedkit.models.pooling import pool

__all__ = [
    "EXPORTERS",
    "FFN_OUTPUT_MODULES",
    "GRAPH_LAYOUT",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "SentenceGraph",
    "check_graph",
    "example_inputs",
    "export_graph",
    "export_module",
    "probe_inputs",
    "quantize_int8",
    "quiet_tools",
]

log = logging.getLogger(__name__)

# bumped whenever what a graph computes or how it is written changes: part of every cache key, so graphs
# written by an older embedkit are rebuilt rather than reused (2: pooling in the graph, TorchScript first,
# per-tensor int8 activations ... see quantize_int8)
GRAPH_LAYOUT = 2
EXPORTERS = ("torchscript", "dynamo")
INPUT_NAMES = ("input_ids", "attention_mask", "position_ids", "prompt_lengths")
OUTPUT_NAMES = ("token_states", "sentence_embedding")
# the feed-forward output projections (`down` in embedkit's encoders, `down_proj` in Qwen): on
# all-MiniLM-L6-v2 they caused most of int8's loss (min cosine vs fp32 0.977 with them quantized)
FFN_OUTPUT_MODULES = ("down", "down_proj")
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # the module path the dynamo exporter records on each node
# a graph equals torch when every output is within this of torch's, relative to the output's largest value
# (fp32 reassociation across engines stays near 1e-6; a wrong graph is off by far more)
GRAPH_TOLERANCE = 1e-4


@contextlib.contextmanager
def quiet_tools() -> Iterator[None]:
    """The exporters' and quantiser's progress chatter (hundreds of INFO lines, notes on axis names, the
    TorchScript exporter's deprecation notice) says nothing to the user: only their errors surface."""
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


class SentenceGraph(nn.Module):
    """`forward_padded` (adapters, if any, already merged) and the pipeline's pooling and Dense layers:
    (input_ids, attention_mask, position_ids [B, T] int64, prompt_lengths [B] int64) ->
    (token_states [B, T, H], sentence_embedding [B, D])."""

    def __init__(self, model: EncoderModel, pooling: Sequence[str], dense: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self.pooling = tuple(pooling)
        self.dense = dense

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        prompt_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = attention_mask.bool()
        states = self.model.forward_padded(input_ids, mask, position_ids)
        pooled = pool(states, mask, self.pooling, prompt_length=prompt_lengths)
        return states, pooled if self.dense is None else self.dense(pooled)


def example_inputs(lengths: Sequence[int] = (8, 5), prompts: Sequence[int] = (0, 2)) -> dict[str, torch.Tensor]:
    """A right-padded batch of rows of `lengths` tokens (ids from 5 up), each with its prompt length. The
    default traces the graph; `probe_inputs` checks it on another shape."""
    width = max(lengths)
    ids = torch.stack([torch.cat([torch.arange(5, 5 + n), torch.zeros(width - n, dtype=torch.long)]) for n in lengths])
    mask = (ids != 0).long()
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": (mask.cumsum(dim=1) - 1) * mask,
        "prompt_lengths": torch.tensor(list(prompts)),
    }


def probe_inputs() -> dict[str, torch.Tensor]:
    """Another batch size, width and prompt mix than the trace's, one row a single token."""
    return example_inputs((13, 1, 6), (3, 0, 0))


def export_module(
    module: nn.Module,
    inputs: dict[str, torch.Tensor],
    output_axes: dict[str, tuple[int, ...]],
    path: Path,
    exporter: str,
) -> None:
    """Write `module` (eval, fp32, CPU), traced on `inputs` (their names become the graph's input names;
    axis 0 is the batch, axis 1 the sequence), as an ONNX graph at `path`. `output_axes`: each output's
    name and its dynamic axes (0 batch, 1 sequence). `exporter`: "torchscript" or "dynamo"."""
    names, args = list(inputs), tuple(inputs.values())
    axis_names = ("batch", "sequence")
    # no autograd: an attention bias computed from a parameter (MPNet's relative positions) would otherwise
    # require grad, the tracer would see another SDPA kernel than inference runs, and record a view of its
    # output that the exporter's decomposed attention cannot take
    with quiet_tools(), torch.no_grad():
        if exporter == "torchscript":
            dynamic_axes = {name: {a: axis_names[a] for a in range(inputs[name].dim())} for name in names}
            dynamic_axes |= {name: {a: axis_names[a] for a in axes} for name, axes in output_axes.items()}
            # a trace records one path through any Python branch on a tensor's values or shape (the
            # tracer warns even for head counts, which never change): export_graph's probe on another
            # shape and other values is what refuses a graph that only fits the example
            import onnx  # the `onnx` extra: imported where a graph is written, not where embedkit loads

            with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
                # written aside, then saved in the one layout every graph has here: the graph in `path`,
                # all weights in `path`.data (the exporter itself keeps small models inline and spreads
                # a large one's tensors over many files)
                traced = Path(scratch) / path.name
                torch.onnx.export(
                    module.eval(),
                    args,
                    str(traced),
                    dynamo=False,
                    input_names=names,
                    output_names=list(output_axes),
                    dynamic_axes=dynamic_axes,
                    opset_version=18,
                )
                onnx.save(
                    onnx.load(str(traced)),
                    str(path),
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=f"{path.name}.data",
                    size_threshold=0,
                )
            return
        if exporter != "dynamo":
            raise ValueError(f"exporter={exporter!r}: expected one of {EXPORTERS}")
        dims = (torch.export.Dim("batch"), torch.export.Dim("sequence"))
        program = torch.onnx.export(
            module.eval(),
            args,
            dynamo=True,
            input_names=names,
            output_names=list(output_axes),
            dynamic_shapes={name: {a: dims[a] for a in range(inputs[name].dim())} for name in names},
            optimize=True,
            verbose=False,
        )
        if program is None:  # only the TorchScript exporter returns nothing
            raise RuntimeError("torch.onnx.export returned no ONNX program")
        program.save(str(path), external_data=True)  # one layout for every size (protobuf stops at 2 GB)


def check_graph(session: Any, module: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    """Raise ValueError unless the ONNX Runtime `session` gives `module`'s outputs on `inputs` (within
    GRAPH_TOLERANCE of each output's largest magnitude)."""
    declared = {arg.name for arg in session.get_inputs()}
    got = session.run(None, {name: value.numpy() for name, value in inputs.items() if name in declared})
    with torch.no_grad():
        expected = module(*inputs.values())
    expected = expected if isinstance(expected, tuple) else (expected,)
    for name, want, have in zip([o.name for o in session.get_outputs()], expected, got, strict=True):
        want = want.float().numpy()
        scale = max(1.0, float(np.abs(want).max()))
        worst = float(np.abs(want - have).max()) if want.shape == have.shape else float("inf")
        if worst > GRAPH_TOLERANCE * scale:
            raise ValueError(f"output {name!r} differs from torch by {worst:.3g} (shape {have.shape} vs {want.shape})")


def export_graph(
    module: nn.Module,
    inputs: dict[str, torch.Tensor],
    output_axes: dict[str, tuple[int, ...]],
    path: Path,
    open_session: Callable,
    probes: Sequence[dict[str, torch.Tensor]] = (),
) -> str:
    """Export `module` (traced on `inputs`) with the first of EXPORTERS that succeeds and whose graph equals
    torch on `inputs` and each of `probes`; returns that exporter's name. RuntimeError naming each
    exporter's failure when none does."""
    failures = []
    for exporter in EXPORTERS:
        for stale in path.parent.glob(f"{path.name}*"):
            stale.unlink()
        try:
            export_module(module, inputs, output_axes, path, exporter)
            session = open_session(path)  # one session per graph: building one costs seconds on a large model
            for probe in (inputs, *probes):
                check_graph(session, module, probe)
        except Exception as exc:  # the exporters' many error types all mean "try the next one"
            failures.append(f"{exporter}: {type(exc).__name__}: {exc}")
            log.info("the %s exporter did not give a usable graph (%s)", exporter, failures[-1])
            continue
        return exporter
    raise RuntimeError("; ".join(failures))


def _owner(node, keep_fp32: tuple[str, ...]) -> str | None:
    """The path of the module named in `keep_fp32` that a MatMul node belongs to, if any: from the dynamo
    exporter's recorded scopes, else the TorchScript exporter's node name ("/model/layers.0/mlp/down/MatMul")."""
    scopes: list[str] = next((ast.literal_eval(p.value) for p in node.metadata_props if p.key == _NAME_SCOPES), [])
    if not scopes:
        parts = node.name.strip("/").split("/")[:-1]
        scopes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return next((scope for scope in scopes if scope.rsplit(".", 1)[-1] in keep_fp32), None)


def quantize_int8(source: Path, target: Path, *, keep_fp32: tuple[str, ...] = FFN_OUTPUT_MODULES) -> list[str]:
    """Dynamic int8 of every weight matmul but those in modules named `keep_fp32`: int8 weights per
    tensor, activations quantised per tensor at run time (ONNX Runtime's dynamic quantisation).

    Per tensor, not per channel: on all-MiniLM-L6-v2 per-tensor weights ran 1.14x faster at the same
    quality (min cosine vs fp32 0.990, recall@10 +0.5 points on natural text; benchmarks/RESULTS.md,
    issue 28). Returns the module paths kept in fp32.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False)
    kept: dict[str, str] = {}  # node name -> module path
    for node in graph.graph.node:
        if node.op_type != "MatMul":
            continue
        owner = _owner(node, keep_fp32)
        if owner is not None:
            kept[node.name] = owner.removeprefix("model.")  # the export wrapper's attribute
    with quiet_tools():  # the quantiser logs each tensor on the root logger
        quantize_dynamic(
            str(source),
            str(target),
            per_channel=False,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=list(kept),
            use_external_data_format=True,
            extra_options={"MatMulConstBOnly": True},  # weights only: attention's activation products stay fp32
        )
    return sorted(set(kept.values()))
