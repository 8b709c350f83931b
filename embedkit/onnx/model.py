"""OnnxModel: runs exported graphs where LocalEmbedder would run the torch module.

It implements the same boundary as the torch families (models/base.py `EmbeddingModel`): called with a
`TokenBatch` it runs the batch's padded view through the graph and gives the packed token states
[N, H], so the runtime's tokenising, token-budget batching and normalisation are the same code for both
backends. `sentence_embeddings(batch)` reads the graph's other output instead, the vectors pooled (and
projected by the pipeline's Dense layers) inside the graph, so that the common call runs no per-token
Python. A model with task adapters (jina-embeddings-v3) gets one graph per adapter, the
adapter merged into its weights, exported when that task is first used; a batch that mixes tasks runs
each task's rows through its graph.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from embedkit.errors import InputError, MissingDependencyError, ModelLoadError
from embedkit.models.base import EncoderModel
from embedkit.onnx.cache import GraphCache, GraphKey
from embedkit.onnx.export import (
    GRAPH_LAYOUT,
    INPUT_NAMES,
    OUTPUT_NAMES,
    SentenceGraph,
    example_inputs,
    export_graph,
    probe_inputs,
    quantize_int8,
)

if TYPE_CHECKING:
    from embedkit.local.batching import TokenBatch

__all__ = ["NUM_THREADS_ENV", "OnnxModel", "import_onnxruntime", "intra_op_threads", "open_cpu_session"]

log = logging.getLogger(__name__)

NUM_THREADS_ENV = "EMBEDKIT_NUM_THREADS"
PIP_HINT = "pip install 'embedkit[onnx]' (onnxruntime, onnx, onnxscript)"


def import_onnxruntime():
    """onnxruntime, or MissingDependencyError with the pip command."""
    try:
        import onnx  # noqa: F401 - the exporter writes graphs with it
        import onnxruntime
        import onnxscript  # noqa: F401 - torch's exporter translates with it
    except ImportError as exc:
        raise MissingDependencyError(f"the ONNX backend needs {exc.name}: {PIP_HINT}") from exc
    return onnxruntime


def intra_op_threads() -> int:
    """$EMBEDKIT_NUM_THREADS, else the CPUs this process may run on."""
    value = os.environ.get(NUM_THREADS_ENV)
    if value is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise InputError(f"{NUM_THREADS_ENV}={value!r}: expected a positive integer")
    return threads


class OnnxModel:
    """Exported graphs of one torch module (an EmbeddingModel), run on ONNX Runtime's CPU provider."""

    def __init__(
        self,
        module: EncoderModel,
        *,
        family: str,
        model_dir: Path,
        weights_digest: str,
        pooling: Sequence[str] = ("mean",),
        dense: nn.Module | None = None,
        quantize: str | None = None,  # None or "int8", as embedkit.load checked
        cache: GraphCache | None = None,
        threads: int | None = None,
    ) -> None:
        self._ort = import_onnxruntime()
        # kept while another task's graph may still be exported from it; dropped once no more can be
        self._module: EncoderModel | None = module.float().cpu().eval()
        self._pooling = tuple(pooling)
        self._dense = None if dense is None else copy.deepcopy(dense).float().cpu().eval()
        self._family = family
        self.quantize = quantize
        self._cache = cache or GraphCache()
        self.threads = threads or intra_op_threads()
        # the boundary's attributes, read once: the module may be dropped
        self.hidden_size: int = module.hidden_size
        self.max_positions: int = module.max_positions
        self.learned_positions: bool = module.learned_positions
        self.adapter_names: tuple[str, ...] = tuple(module.adapter_names)
        self.merged_adapter: int | None = module.merged_adapter
        self._base_key = {
            "weights_digest": weights_digest,
            "config_digest": hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest(),
            "family": family,
            "dtype": "float32",
            "quantize": quantize or "none",
            "embedkit_version": _embedkit_version(),
            "torch_version": torch.__version__,
            "inputs": ",".join(INPUT_NAMES),
            # the graph pools: its pooling modes are part of what it computes (the Dense weights are in
            # weights_digest), and so is the layout version of the export itself
            "outputs": f"{','.join(OUTPUT_NAMES)};pooling={'+'.join(self._pooling)};layout={GRAPH_LAYOUT}",
        }
        self._sessions: dict[int, Any] = {}
        self._kept_fp32: list[str] = []
        self.exporter: str | None = None  # which of torch's exporters wrote the graph in use
        self._lock = threading.Lock()  # one export at a time; sessions themselves are thread-safe

    def __repr__(self) -> str:
        return f"OnnxModel(family={self._family!r}, quantize={self.quantize!r}, threads={self.threads})"

    @property
    def kept_fp32(self) -> list[str]:
        """Under int8: the modules whose matmuls stayed fp32."""
        return list(self._kept_fp32)

    def prepare(self, adapter: int = -1) -> None:
        """Export (or find in the cache) the graph for `adapter` now rather than at its first use."""
        self._session(adapter)

    def __call__(self, batch: TokenBatch) -> torch.Tensor:
        """batch (on the CPU) -> token states [N, H], packed as `batch.input_ids`."""
        view = batch.padded()
        feed = _feed(view.input_ids, view.attention_mask, view.position_ids, batch.prompt_lengths)
        return self._by_adapter(OUTPUT_NAMES[0], batch.adapter_ids, feed)[view.attention_mask]

    def sentence_embeddings(self, batch: TokenBatch) -> torch.Tensor:
        """batch (on the CPU) -> float32 [B, dimension]: pooled as the pipeline pools (prompt tokens left
        out) and through its Dense layers, in the graph; not normalised."""
        view = batch.padded()
        feed = _feed(view.input_ids, view.attention_mask, view.position_ids, batch.prompt_lengths)
        return self._by_adapter(OUTPUT_NAMES[1], batch.adapter_ids, feed)

    def forward_padded(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        adapter_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B, T], attention_mask [B, T] bool, position_ids [B, T], adapter_ids [B] (-1 = none)
        -> token states [B, T, H]. ValueError for adapter ids the model does not have."""
        return self._by_adapter(OUTPUT_NAMES[0], adapter_ids, _feed(input_ids, attention_mask, position_ids, None))

    def _by_adapter(self, output: str, adapter_ids: torch.Tensor | None, feed: dict[str, np.ndarray]) -> torch.Tensor:
        """`output` of the graph over `feed`, each row through its adapter's graph, rows in feed order."""
        if adapter_ids is None:
            return self._run(-1, output, feed)
        adapters = adapter_ids.tolist()  # on the host: CPU tensors, no device to wait for
        self._check_adapters(adapters)
        if self.merged_adapter is not None or len(set(adapters)) == 1:
            return self._run(adapters[0], output, feed)
        out: torch.Tensor | None = None
        for adapter in sorted(set(adapters)):
            rows = np.array([i for i, a in enumerate(adapters) if a == adapter])
            values = self._run(adapter, output, {name: value[rows] for name, value in feed.items()})
            if out is None:  # the output's shape past the batch axis is known once one part has run
                out = torch.empty((len(adapters), *values.shape[1:]), dtype=values.dtype)
            out[torch.from_numpy(rows)] = values
        assert out is not None  # a mixed batch has at least two adapters
        return out

    def _check_adapters(self, adapters: list[int]) -> None:
        if self.merged_adapter is not None:
            if set(adapters) != {self.merged_adapter}:
                raise ValueError(
                    f"adapter {self.merged_adapter} ({self.adapter_names[self.merged_adapter]!r}) is merged into "
                    f"the weights; adapter_ids must all be {self.merged_adapter}"
                )
            return
        if any(not -1 <= a < len(self.adapter_names) for a in adapters):
            names = ", ".join(f"{i}={name!r}" for i, name in enumerate(self.adapter_names)) or "none"
            raise ValueError(f"adapter_ids must be -1 (base weights) or an adapter index ({names}); got {adapters}")

    def _run(self, adapter: int, output: str, feed: dict[str, np.ndarray]) -> torch.Tensor:
        session = self._session(adapter)
        # a family that reads no positions (ALiBi) exports a graph without that input
        declared = {name: feed[name] for name in (arg.name for arg in session.get_inputs())}
        return torch.from_numpy(session.run([output], declared)[0])

    def _session(self, adapter: int) -> Any:
        if self.merged_adapter is not None:  # the module's weights already carry that adapter
            adapter = -1
        session = self._sessions.get(adapter)
        if session is not None:
            return session
        with self._lock:
            if adapter not in self._sessions:
                self._sessions[adapter] = self._load_session(adapter)
                if not self.adapter_names:  # one graph is all this model has: free the torch weights
                    self._module = None
            return self._sessions[adapter]

    def _load_session(self, adapter: int) -> Any:
        if self.merged_adapter is not None:
            name = self.adapter_names[self.merged_adapter]
        else:
            name = "base" if adapter < 0 else self.adapter_names[adapter]
        key = GraphKey(adapter=name, **self._base_key)
        path, manifest = self._cache.graph(key, lambda target: self._build(adapter, target))
        self._kept_fp32 = manifest.get("kept_fp32", [])
        self.exporter = manifest.get("exporter")
        if self.quantize:
            log.info("%s int8 graph: matmuls kept fp32 in %s", name, ", ".join(self._kept_fp32) or "none")
        try:
            return self._open(path)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load the {self._family} graph ({exc})") from exc

    def _open(self, path: Path) -> Any:
        return open_cpu_session(self._ort, path, self.threads)

    def _build(self, adapter: int, target: Path) -> dict:
        module = self._module
        if module is None:  # kept while more graphs may be needed, so never None here
            raise RuntimeError("the torch module was released before its last graph was exported")
        if adapter >= 0:  # a copy with this task's adapter folded in; the shared module keeps them all
            module = copy.deepcopy(module)
            module.merge_adapter(adapter)
        plain = target if not self.quantize else target.with_name("fp32.onnx")
        graph = SentenceGraph(module, self._pooling, self._dense)
        output_axes = {OUTPUT_NAMES[0]: (0, 1), OUTPUT_NAMES[1]: (0,)}
        try:
            exporter = export_graph(graph, example_inputs(), output_axes, plain, self._open, [probe_inputs()])
        except Exception as exc:  # every exporter failed; the message names each one's error
            raise ModelLoadError(
                f"the {self._family} model cannot be exported to ONNX ({exc}); use backend='torch'"
            ) from exc
        log.info("%s graph written by torch's %s exporter", self._family, exporter)
        if not self.quantize:
            return {"exporter": exporter}
        kept = quantize_int8(plain, target)
        for leftover in target.parent.glob("fp32.onnx*"):
            leftover.unlink()
        return {"exporter": exporter, "kept_fp32": kept}


def open_cpu_session(ort: Any, path: Path, threads: int) -> Any:
    """An ONNX Runtime session over the graph at `path` on the CPU provider: `threads` intra-op threads, one
    inter-op thread (a graph of one chain of layers), every graph optimisation (the fastest level measured,
    benchmarks/onnx_export.py)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feed(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    prompt_lengths: torch.Tensor | None,
) -> dict[str, np.ndarray]:
    """A padded batch [B, T] (mask bool) and its rows' prompt lengths [B] (None = 0) as the graph's int64 inputs."""
    return {
        INPUT_NAMES[0]: input_ids.numpy().astype(np.int64, copy=False),
        INPUT_NAMES[1]: attention_mask.numpy().astype(np.int64),
        INPUT_NAMES[2]: position_ids.numpy().astype(np.int64, copy=False),
        INPUT_NAMES[3]: (
            np.zeros(input_ids.shape[0], dtype=np.int64)
            if prompt_lengths is None
            else prompt_lengths.numpy().astype(np.int64, copy=False)
        ),
    }


def _embedkit_version() -> str:
    from embedkit import __version__

    return __version__
