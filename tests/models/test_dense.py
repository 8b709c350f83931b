"""Dense modules of a sentence-transformers pipeline, for any family: parity with SentenceTransformer.

A tiny random BERT gets two Dense modules after its mean pooling, as sentence-transformers saves them
(its own Dense module writes the folders): one with a bias and Tanh (the module's default activation,
also what an absent `activation_function` means), one without a bias and with Identity. The torch and
ONNX backends both run them after pooling; late chunking projects each span's vector too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import embedkit
from embedkit.errors import ModelLoadError
from embedkit.models.st_files import read_pipeline_files

from ..conftest import write_tiny_bert

TEXTS = ["how do vector databases index embeddings?", "x", "Die Katze schläft auf dem Sofa.", "hello world " * 9]


def add_dense(model_dir: Path, hidden: int, *, normalize: bool) -> Path:
    from sentence_transformers.sentence_transformer.modules import Dense

    torch.manual_seed(5)
    shapes = [("2_Dense", hidden, 24, True, torch.nn.Tanh()), ("3_Dense", 24, 20, False, torch.nn.Identity())]
    modules = json.loads((model_dir / "modules.json").read_text())
    for folder, n_in, n_out, bias, act in shapes:
        (model_dir / folder).mkdir()
        Dense(n_in, n_out, bias=bias, activation_function=act).save(str(model_dir / folder))
        modules.append(
            {
                "idx": len(modules),
                "name": str(len(modules)),
                "path": folder,
                "type": "sentence_transformers.models.Dense",
            }
        )
    if normalize:
        modules.append(
            {
                "idx": len(modules),
                "name": str(len(modules)),
                "path": "4_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    (model_dir / "modules.json").write_text(json.dumps(modules))
    return model_dir


@pytest.fixture(scope="module")
def bert_dense_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    model_dir = write_tiny_bert(tmp_path_factory.mktemp("bert-dense"), minilm_dir, seed=4)
    return add_dense(model_dir, 32, normalize=False)


def test_pipeline_files_list_the_dense_modules(bert_dense_dir: Path) -> None:
    pipeline = read_pipeline_files(bert_dense_dir)
    assert [(d.in_features, d.out_features, d.bias, d.activation) for d in pipeline.dense] == [
        (32, 24, True, "tanh"),
        (24, 20, False, "identity"),
    ]


def test_bert_with_dense_matches_sentence_transformers(bert_dense_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(bert_dense_dir), device="cpu")
    expected = st.encode(TEXTS, convert_to_numpy=True)  # no Normalize module: raw
    embedder = embedkit.load(bert_dense_dir, device="cpu", backend="torch")
    assert embedder.dimension == 20
    assert np.abs(embedder.embed(TEXTS, normalize=False) - expected).max() < 1e-5
    normalized = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.abs(embedder.embed(TEXTS) - normalized).max() < 1e-6


def test_late_chunking_projects_each_span(tmp_path: Path, bert_dense_dir: Path) -> None:
    """embed_spans pools each span, then applies the Dense modules: the same folder without them, projected by hand."""
    import shutil

    from safetensors.torch import load_file

    plain = Path(shutil.copytree(bert_dense_dir, tmp_path / "plain"))
    modules = json.loads((plain / "modules.json").read_text())
    (plain / "modules.json").write_text(json.dumps(modules[:2]))  # Transformer, Pooling
    text, spans = TEXTS[3], [(0, 11), (12, 40), (40, len(TEXTS[3]))]
    pooled = torch.from_numpy(embedkit.load(plain, device="cpu").embed_spans(text, spans, task=None, normalize=False))
    first, second = (load_file(str(bert_dense_dir / f / "model.safetensors")) for f in ("2_Dense", "3_Dense"))
    expected = torch.tanh(pooled @ first["linear.weight"].T + first["linear.bias"]) @ second["linear.weight"].T
    got = embedkit.load(bert_dense_dir, device="cpu").embed_spans(text, spans, task=None, normalize=False)
    assert got.shape == (3, 20)
    assert np.abs(got - expected.numpy()).max() < 1e-5


def test_onnx_backend_runs_the_dense_modules(tmp_path: Path, bert_dense_dir: Path) -> None:
    pytest.importorskip("onnxruntime")
    want = embedkit.load(bert_dense_dir, device="cpu", backend="torch").embed(TEXTS, normalize=False)
    onnx = embedkit.load(bert_dense_dir, device="cpu", backend="onnx", onnx_cache_dir=tmp_path / "cache")
    assert onnx.backend == "onnx" and onnx.dimension == 20
    assert np.abs(onnx.embed(TEXTS, normalize=False) - want).max() < 1e-5


def test_dense_after_normalize_is_refused(tmp_path: Path, minilm_dir: Path) -> None:
    model_dir = write_tiny_bert(tmp_path / "m", minilm_dir)
    modules = json.loads((model_dir / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (model_dir / "modules.json").write_text(json.dumps(modules))
    add_dense(model_dir, 32, normalize=False)
    with pytest.raises(ModelLoadError, match="a Dense module after Normalize"):
        read_pipeline_files(model_dir)


def test_missing_dense_weight_is_named(tmp_path: Path, bert_dense_dir: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    broken = Path(shutil.copytree(bert_dense_dir, tmp_path / "broken"))
    path = broken / "2_Dense" / "model.safetensors"
    state = load_file(str(path))
    del state["linear.bias"]
    save_file(state, str(path))
    with pytest.raises(ModelLoadError, match=r"2_Dense: Dense weights do not match .*missing \['linear.bias'\]"):
        embedkit.load(broken, device="cpu", backend="torch")


def test_dense_weights_are_part_of_the_weights_digest(tmp_path: Path, bert_dense_dir: Path) -> None:
    """Two folders that differ only in a Dense layer give different vectors, so different fingerprints."""
    import shutil

    from safetensors.torch import load_file, save_file

    changed = Path(shutil.copytree(bert_dense_dir, tmp_path / "changed"))
    weights = next((changed / "2_Dense").glob("*.safetensors"))  # Tanh: a scale is not normalised away
    state = load_file(str(weights))
    save_file({name: tensor * 1.5 for name, tensor in state.items()}, str(weights))
    original = embedkit.load(bert_dense_dir, device="cpu", backend="torch")
    edited = embedkit.load(changed, device="cpu", backend="torch")
    assert not np.allclose(original.embed(TEXTS[:1]), edited.embed(TEXTS[:1]))
    assert original.weights_digest != edited.weights_digest
    plain = embedkit.load(write_tiny_bert(tmp_path / "plain", bert_dense_dir, seed=4), device="cpu", backend="torch")
    assert plain.weights_digest != original.weights_digest
