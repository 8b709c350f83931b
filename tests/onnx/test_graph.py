"""What the exported graph computes: pooling (every sentence-transformers mode, prompt tokens left out) and
the pipeline's Dense layers inside the graph, the exporters' order, and the per-backend CPU budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import embedkit
from embedkit.local.batching import DEFAULT_CPU_BATCH_TOKENS, cpu_batch_tokens
from embedkit.models.pooling import pool
from embedkit.onnx import export
from embedkit.onnx.export import (
    EXPORTERS,
    OUTPUT_NAMES,
    SentenceGraph,
    example_inputs,
    export_graph,
    probe_inputs,
)

from ..conftest import write_tiny_bert

ort = pytest.importorskip("onnxruntime")

TEXTS = ["x", "how do vector databases index embeddings?", "a longer text about chunking and batching " * 4]
OUTPUT_AXES = {OUTPUT_NAMES[0]: (0, 1), OUTPUT_NAMES[1]: (0,)}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny"), minilm_dir, seed=5)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> embedkit.LocalEmbedder:
    return embedkit.load(tiny_dir, device="cpu", backend="torch")


def run(path: Path, batch: dict, outputs: list[str] | None = None) -> list[np.ndarray]:
    """The graph at `path` over `batch`, fed the inputs it declares (a graph whose pooling reads no
    prompt lengths, `lasttoken`, has no such input)."""
    session = open_session(path)
    declared = {arg.name for arg in session.get_inputs()}
    return session.run(outputs, {name: np.asarray(value) for name, value in batch.items() if name in declared})


def open_session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "modes", [("mean",), ("cls",), ("lasttoken",), ("max", "mean_sqrt_len_tokens", "weightedmean")]
)
def test_graph_pools_as_torch_pools_with_prompts_left_out(tiny: embedkit.LocalEmbedder, tmp_path: Path, modes) -> None:
    graph = SentenceGraph(tiny.model, modes, None)
    exporter = export_graph(graph, example_inputs(), OUTPUT_AXES, tmp_path / "model.onnx", open_session)
    assert exporter == "torchscript", "BERT traces cleanly, so the faster exporter's graph is kept"
    batch = example_inputs((9, 4, 12, 1), (3, 0, 5, 0))  # prompts of 3 and 5 tokens in two rows
    states, pooled = run(tmp_path / "model.onnx", batch)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        want_states = tiny.model.forward_padded(batch["input_ids"], mask, batch["position_ids"])
        want = pool(want_states, mask, modes, prompt_length=batch["prompt_lengths"])
    assert pooled.shape == (4, tiny.model.hidden_size * len(modes))
    np.testing.assert_allclose(pooled, want.numpy(), atol=2e-5)
    np.testing.assert_allclose(states[mask.numpy()], want_states[mask].numpy(), atol=2e-5)
    # the prompt really is left out: the same rows without prompts pool to other vectors
    without = {**batch, "prompt_lengths": np.zeros(4, dtype=np.int64)}
    other = run(tmp_path / "model.onnx", without, [OUTPUT_NAMES[1]])
    assert not np.allclose(other[0][[0, 2]], pooled[[0, 2]], atol=1e-4) or modes == ("lasttoken",)


def test_dense_layers_run_inside_the_graph(tiny: embedkit.LocalEmbedder, tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(tiny.model.hidden_size, 16), nn.Tanh()).eval()
    graph = SentenceGraph(tiny.model, ("mean",), dense)
    export_graph(graph, example_inputs(), OUTPUT_AXES, tmp_path / "model.onnx", open_session)
    batch = probe_inputs()
    (pooled,) = run(tmp_path / "model.onnx", batch, [OUTPUT_NAMES[1]])
    with torch.no_grad():
        want = graph(*batch.values())[1]
    assert pooled.shape == (3, 16)
    np.testing.assert_allclose(pooled, want.numpy(), atol=2e-5)


def test_a_graph_that_fits_only_the_trace_is_refused(tiny: embedkit.LocalEmbedder, tmp_path: Path) -> None:
    class WidthBaked(nn.Module):
        """Scales by the width as a Python int: a trace bakes the example's width in, and so does the dynamo
        exporter, which then makes the sequence axis static."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = SentenceGraph(tiny.model, ("mean",), None)

        def forward(self, input_ids, attention_mask, position_ids, prompt_lengths):
            states, pooled = self.inner(input_ids, attention_mask, position_ids, prompt_lengths)
            return states, pooled * (1.0 + int(input_ids.shape[1]) / 100)

    with pytest.raises(RuntimeError) as refused:
        export_graph(
            WidthBaked(), example_inputs(), OUTPUT_AXES, tmp_path / "model.onnx", open_session, [probe_inputs()]
        )
    assert "torchscript: ValueError: output 'sentence_embedding' differs from torch" in str(refused.value)
    assert "dynamo: " in str(refused.value)


def test_the_dynamo_exporter_takes_over_when_the_trace_fails(
    tiny: embedkit.LocalEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert EXPORTERS == ("torchscript", "dynamo")  # the faster graph first (benchmarks/onnx_export.py)
    real = export.export_module

    def trace_fails(module, inputs, output_axes, path, exporter):
        if exporter == "torchscript":
            raise RuntimeError("Unsupported: an op the tracer cannot record")
        return real(module, inputs, output_axes, path, exporter)

    monkeypatch.setattr(export, "export_module", trace_fails)
    graph = SentenceGraph(tiny.model, ("mean",), None)
    used = export_graph(graph, example_inputs(), OUTPUT_AXES, tmp_path / "model.onnx", open_session, [probe_inputs()])
    assert used == "dynamo"
    batch = probe_inputs()
    (pooled,) = run(tmp_path / "model.onnx", batch, [OUTPUT_NAMES[1]])
    with torch.no_grad():
        np.testing.assert_allclose(pooled, graph(*batch.values())[1].numpy(), atol=2e-5)


def test_each_cpu_backend_gets_its_own_budget(tiny: embedkit.LocalEmbedder, tiny_dir: Path, tmp_path: Path) -> None:
    assert cpu_batch_tokens("torch") == DEFAULT_CPU_BATCH_TOKENS
    assert cpu_batch_tokens("onnx") == cpu_batch_tokens("onnx", "int8") == 1024
    assert tiny.batch_tokens == DEFAULT_CPU_BATCH_TOKENS
    onnx_side = embedkit.load(tiny_dir, device="cpu", backend="onnx", onnx_cache_dir=tmp_path)
    assert onnx_side.batch_tokens == 1024 and onnx_side.model.exporter == "torchscript"
    np.testing.assert_allclose(onnx_side.embed(TEXTS), tiny.embed(TEXTS), atol=1e-5)
    # the raw pooled vectors the server post-processes come from the graph's pooled output too
    batch = onnx_side.token_batch(onnx_side.encode(TEXTS))
    np.testing.assert_allclose(onnx_side.embed_token_batch(batch), tiny.embed_token_batch(batch), atol=1e-5)
