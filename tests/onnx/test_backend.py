"""Choosing the ONNX backend, the graph cache, int8, and the errors on the way in."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import embedkit
from embedkit.chunking import Chunker
from embedkit.errors import InputError, MissingDependencyError, ModelLoadError
from embedkit.ingestion import load_directory
from embedkit.models.bert import Bert
from embedkit.onnx.cache import GraphCache, GraphKey
from embedkit.onnx.export import GRAPH_LAYOUT

from ..conftest import EXAMPLE_DOCS, write_tiny_bert

pytest.importorskip("onnxruntime")

TEXTS = ["x", "how do vector databases index embeddings?", "a longer text about chunking and batching " * 4]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_dir, seed=21)


def onnx_load(model_dir: Path, cache: Path, **kwargs: object) -> embedkit.LocalEmbedder:
    return embedkit.load(model_dir, device="cpu", backend="onnx", onnx_cache_dir=cache, **kwargs)


def entries(cache: Path) -> list[Path]:
    return sorted(cache.iterdir())


# -- choosing the backend ---------------------------------------------------------------------------------


def test_auto_picks_onnx_for_float32_on_cpu(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBEDKIT_BACKEND")
    assert embedkit.load(tiny_dir, device="cpu", onnx_cache_dir=tmp_path).backend == "onnx"
    assert embedkit.load(tiny_dir, device="cpu", dtype="bfloat16").backend == "torch"
    monkeypatch.setenv("EMBEDKIT_BACKEND", "torch")
    assert embedkit.load(tiny_dir, device="cpu").backend == "torch"


def test_auto_falls_back_to_torch_when_the_family_cannot_export(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    traced = Bert.forward_padded  # what the exporter traces

    def branches_on_shape(self, input_ids, attention_mask, position_ids, adapter_ids=None):
        states = traced(self, input_ids, attention_mask, position_ids, adapter_ids)
        # a Python branch on the batch size: the TorchScript trace records the example's side only, which
        # the probe on another batch size shows; the dynamo exporter refuses a branch on a dynamic size
        return states if input_ids.shape[0] == 2 else states + 1

    monkeypatch.setattr(Bert, "forward_padded", branches_on_shape)
    with pytest.raises(ModelLoadError, match="bert model cannot be exported to ONNX") as refused:
        onnx_load(tiny_dir, tmp_path)
    assert "backend='torch'" in str(refused.value)
    # each exporter's reason is named
    assert "torchscript: ValueError: output 'token_states' differs from torch" in str(refused.value)
    assert "dynamo: " in str(refused.value)
    assert not [p for p in tmp_path.iterdir()], "a failed export leaves nothing in the cache"
    with caplog.at_level(logging.WARNING, logger="embedkit.local"):
        fallback = embedkit.load(tiny_dir, device="cpu", backend="auto", onnx_cache_dir=tmp_path)
    assert fallback.backend == "torch"
    assert "running on torch instead" in caplog.text and "bert" in caplog.text
    np.testing.assert_allclose(fallback.embed(TEXTS), embedkit.load(tiny_dir, backend="torch").embed(TEXTS))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "tensorrt"}, "backend='tensorrt': expected one of auto, torch, onnx"),
        ({"backend": "onnx", "quantize": "int4"}, "quantize='int4'"),
        ({"backend": "torch", "quantize": "int8"}, "runs on the ONNX backend"),
        ({"backend": "onnx", "dtype": "float16"}, "the ONNX backend runs float32 on the CPU"),
    ],
)
def test_bad_choices_are_refused(tiny_dir: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        embedkit.load(tiny_dir, device="cpu", **kwargs)


def test_bad_backend_from_the_environment_names_the_variable(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDKIT_BACKEND", "gpu")
    with pytest.raises(InputError, match=r"\$EMBEDKIT_BACKEND='gpu'"):
        embedkit.load(tiny_dir, device="cpu")


def test_threads_follow_embedkit_num_threads(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDKIT_NUM_THREADS", "1")
    assert onnx_load(tiny_dir, tmp_path).model.threads == 1
    monkeypatch.delenv("EMBEDKIT_NUM_THREADS")
    assert onnx_load(tiny_dir, tmp_path).model.threads == len(os.sched_getaffinity(0))
    monkeypatch.setenv("EMBEDKIT_NUM_THREADS", "zero")
    with pytest.raises(InputError, match="EMBEDKIT_NUM_THREADS='zero'"):
        onnx_load(tiny_dir, tmp_path)


def test_missing_onnxruntime_gives_the_pip_command(tiny_dir: Path) -> None:
    script = f"""
import sys
sys.modules["onnxruntime"] = None  # as if it were not installed
import embedkit
from embedkit.errors import MissingDependencyError
assert embedkit.load({str(tiny_dir)!r}, device="cpu", backend="auto").backend == "torch"
try:
    embedkit.load({str(tiny_dir)!r}, device="cpu", backend="onnx")
except MissingDependencyError as exc:
    print(exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "onnxruntime" in done.stdout and "pip install 'embedkit[onnx]'" in done.stdout
    assert issubclass(MissingDependencyError, ImportError)


# -- the cache --------------------------------------------------------------------------------------------


def test_a_cached_graph_is_reused(tiny_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="embedkit.onnx.cache"):
        first = onnx_load(tiny_dir, tmp_path).embed(TEXTS)
        assert "exported bert to ONNX in" in caplog.text
        caplog.clear()
        again = onnx_load(tiny_dir, tmp_path).embed(TEXTS)
    assert "exported" not in caplog.text
    np.testing.assert_array_equal(first, again)
    (entry,) = entries(tmp_path)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["key"]["family"] == "bert" and manifest["key"]["embedkit_version"] == embedkit.__version__
    assert manifest["build_seconds"] > 0 and set(manifest["files"]) == {"model.onnx", "model.onnx.data"}


@pytest.mark.parametrize("damage", ["flip a weight byte", "truncate the weights", "drop the manifest", "other key"])
def test_a_damaged_or_stale_entry_is_rebuilt_never_used(
    tiny_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    expected = embedkit.load(tiny_dir, device="cpu", backend="torch").embed(TEXTS)
    onnx_load(tiny_dir, tmp_path)
    (entry,) = entries(tmp_path)
    weights, manifest = entry / "model.onnx.data", entry / "manifest.json"
    if damage == "flip a weight byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate the weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "drop the manifest":
        manifest.unlink()
    else:  # an entry written by another embedkit version under this name
        recorded = json.loads(manifest.read_text())
        recorded["key"]["embedkit_version"] = "0.0.1"
        manifest.write_text(json.dumps(recorded))
    with caplog.at_level(logging.WARNING, logger="embedkit.onnx.cache"):
        rebuilt = onnx_load(tiny_dir, tmp_path).embed(TEXTS)
    assert "stale or corrupt ONNX cache entry; rebuilding it" in caplog.text
    np.testing.assert_allclose(rebuilt, expected, atol=1e-5)
    assert GraphCache.verified(entry, GraphKey(**json.loads(manifest.read_text())["key"])) is not None


def test_weights_and_quantisation_are_part_of_the_key(tiny_dir: Path, minilm_dir: Path, tmp_path: Path) -> None:
    onnx_load(tiny_dir, tmp_path / "cache")
    onnx_load(tiny_dir, tmp_path / "cache", quantize="int8")
    other = write_tiny_bert(tmp_path / "other", minilm_dir, seed=22)  # same config, other weights
    onnx_load(other, tmp_path / "cache")
    keys = [json.loads((e / "manifest.json").read_text())["key"] for e in entries(tmp_path / "cache")]
    assert len(keys) == 3
    # the graph reads position ids and prompt lengths and pools inside: a graph of an older form (no pooling,
    # ids and mask only, another export layout) is another entry, rebuilt rather than reused
    assert {k["inputs"] for k in keys} == {"input_ids,attention_mask,position_ids,prompt_lengths"}
    assert {k["outputs"] for k in keys} == {f"token_states,sentence_embedding;pooling=mean;layout={GRAPH_LAYOUT}"}
    assert sorted(k["quantize"] for k in keys) == ["int8", "none", "none"]
    assert len({k["weights_digest"] for k in keys}) == 2


def test_two_builders_racing_publish_one_entry(tmp_path: Path) -> None:
    """Both builders are inside `build` at once; one rename wins, the other uses the winner's entry."""
    cache = GraphCache(tmp_path)
    key = GraphKey("w" * 64, "c" * 64, "bert", "base", "float32", "none", "0", "0", "input_ids", "token_states")
    both_building = threading.Barrier(2, timeout=30)
    results: list[tuple[Path, dict]] = []

    def build(target: Path) -> dict:
        both_building.wait()
        target.write_bytes(b"graph " + os.urandom(16))
        return {}

    threads = [threading.Thread(target=lambda: results.append(cache.graph(key, build))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0][0] == results[1][0]
    assert results[0][1]["files"] == results[1][1]["files"]  # both hold the published entry's manifest
    assert [p.name for p in tmp_path.iterdir()] == [key.name]  # no staging directory left behind
    assert GraphCache.verified(tmp_path / key.name, key) is not None


def test_two_processes_exporting_at_once_share_one_entry(tiny_dir: Path, tmp_path: Path) -> None:
    cache, start = tmp_path / "cache", tmp_path / "start"
    script = f"""
import os, time, sys
import embedkit
while not os.path.exists({str(start)!r}):
    time.sleep(0.01)
embedder = embedkit.load({str(tiny_dir)!r}, device="cpu", backend="onnx", onnx_cache_dir={str(cache)!r})
vectors = embedder.embed(["x", "y z"])
sys.stdout.write(repr(vectors.round(5).tolist()))
"""
    children = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    start.touch()
    outputs = [child.communicate(timeout=300)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0]
    assert outputs[0] == outputs[1]
    (entry,) = entries(cache)
    assert GraphCache.verified(entry, GraphKey(**json.loads((entry / "manifest.json").read_text())["key"]))


def test_an_unwritable_cache_is_a_clear_error(tiny_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ModelLoadError, match=r"cannot write the ONNX cache.*EMBEDKIT_CACHE_DIR"):
        onnx_load(tiny_dir, blocker / "cache")


# -- int8 -------------------------------------------------------------------------------------------------


def test_int8_keeps_quality_on_natural_text(minilm_dir: Path, tmp_path: Path) -> None:
    fp32 = onnx_load(minilm_dir, tmp_path)
    int8 = onnx_load(minilm_dir, tmp_path, quantize="int8")
    assert int8.describe()["backend"] == "onnx int8" and int8.describe()["dtype"] == "int8" and int8.quantize == "int8"
    assert int8.model.kept_fp32 == [f"layers.{i}.mlp.down" for i in range(6)]
    chunker = Chunker(fp32, max_tokens=128)
    passages = [chunk.text for doc in load_directory(EXAMPLE_DOCS) for chunk in chunker.split(doc.text)]
    assert len(passages) > 50
    a, b = fp32.embed(passages), int8.embed(passages)
    cosines = (a * b).sum(axis=1)
    assert cosines.min() >= 0.98, cosines.min()
    # what retrieval sees: each passage's nearest other passage is mostly the same under both
    same = (np.argsort(-(a @ a.T), axis=1)[:, 1] == np.argsort(-(b @ b.T), axis=1)[:, 1]).mean()
    assert same >= 0.9, same
