"""SPLADE encoders against sentence-transformers' SparseEncoder on tiny random checkpoints in its layout.

The checkpoints are written the way sentence-transformers publishes them: transformers' BertForMaskedLM /
DistilBertForMaskedLM saved by `save_pretrained`, wrapped by `SparseEncoder(modules=[Transformer(fill-mask),
SpladePooling])` (or a Router with a SparseStaticEmbedding query route) and `save`d. Every comparison
dense-ifies both outputs: max abs diff < 1e-5 (fp32), and the same nonzero entries (an entry one side
rounds to exactly zero must be below 1e-5 on the other).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from embedkit.errors import InputError, ModelLoadError
from embedkit.sparse import SparseEncoder, SparseVector, load_sparse

from ..conftest import TOKENIZER_FILES

MAX_SEQ_LENGTH = 64
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "hello",
    "Sparse retrieval keeps one weight per vocabulary entry, " * 20,  # past max_seq_length: truncated
    "Qdrant stores named sparse vectors beside the dense ones",
    "   spaces   and UPPER case   ",
    "x",
]


def _hf_checkpoint(target: Path, tokenizer_dir: Path, kind: str, seed: int) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertModel, DistilBertConfig, DistilBertForMaskedLM

    torch.manual_seed(seed)
    if kind == "distilbert":
        config = DistilBertConfig(
            vocab_size=30522, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128
        )
        model = DistilBertForMaskedLM(config)
    else:
        config = BertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        model = BertModel(config) if kind == "bert-no-head" else BertForMaskedLM(config)
    with torch.no_grad():  # random init leaves the head's bias at zero: give it values to test
        for name, parameter in model.named_parameters():
            if name.endswith(("predictions.bias", "vocab_projector.bias")):
                parameter.normal_(0.0, 0.5)
    model.eval().save_pretrained(target, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, target / name)
    return target


def write_splade(
    target: Path,
    tokenizer_dir: Path,
    *,
    kind: str = "bert",
    strategy: str = "max",
    activation: str = "relu",
    inference_free: bool = False,
    seed: int = 0,
) -> Path:
    """A SparseEncoder folder as sentence-transformers saves one."""
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder import SparseEncoder as STSparseEncoder
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    checkpoint = _hf_checkpoint(target.with_name(target.name + "-hf"), tokenizer_dir, kind, seed)
    transformer = Transformer(str(checkpoint), transformer_task="fill-mask", max_seq_length=MAX_SEQ_LENGTH)
    pooling = SpladePooling(strategy, activation_function=activation)
    if inference_free:
        generator = torch.Generator().manual_seed(seed)
        weight = torch.rand(30522, generator=generator) * (torch.rand(30522, generator=generator) > 0.3)
        static = SparseStaticEmbedding(tokenizer=transformer.tokenizer, weight=weight, frozen=True)
        router = Router.for_query_document(query_modules=[static], document_modules=[transformer, pooling])
        model = STSparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu")
    else:
        model = STSparseEncoder(modules=[transformer, pooling], device="cpu")
    model.save(str(target))
    return target


def dense(vectors: list[SparseVector], width: int) -> np.ndarray:
    out = np.zeros((len(vectors), width), dtype=np.float64)
    for row, vector in enumerate(vectors):
        assert vector.indices == sorted(set(vector.indices)), "indices must be unique and ascending"
        assert all(value != 0 for value in vector.values)
        out[row, vector.indices] = vector.values
    return out


def assert_parity(ours: list[SparseVector], theirs: torch.Tensor, *, relative: bool = False) -> None:
    """`relative`: sum pooling adds up to max_seq_length terms (weights reach ~60 here), so there the
    bound is 1e-5 of the weight, fp32's rounding of a sum; max pooling is held to 1e-5 absolute."""
    reference = theirs.to_dense().double().numpy() if theirs.is_sparse else theirs.double().numpy()
    mine = dense(ours, reference.shape[1])
    scale = np.maximum(1.0, np.abs(reference)) if relative else 1.0
    assert (np.abs(mine - reference) / scale).max() < 1e-5
    differs = (mine != 0) != (reference != 0)  # nonzero on one side only: only where a logit rounds at 0
    assert np.abs(mine[differs]).max(initial=0) < 1e-5 and np.abs(reference[differs]).max(initial=0) < 1e-5
    assert differs.sum() <= 0.001 * (reference != 0).sum()


@pytest.fixture(scope="module")
def splade_dirs(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("splade")
    return {
        "bert": write_splade(root / "bert", minilm_dir, seed=1),
        "distilbert": write_splade(root / "distilbert", minilm_dir, kind="distilbert", seed=2),
        "bert-sum-log1p": write_splade(root / "sum", minilm_dir, strategy="sum", activation="log1p_relu", seed=3),
        "inference-free": write_splade(
            root / "inference-free", minilm_dir, kind="distilbert", activation="log1p_relu", inference_free=True, seed=4
        ),
    }


def _st(model_dir: Path, **kwargs):
    from sentence_transformers.sparse_encoder import SparseEncoder as STSparseEncoder

    return STSparseEncoder(str(model_dir), device="cpu", **kwargs)


@pytest.mark.parametrize("name", ["bert", "distilbert", "bert-sum-log1p", "inference-free"])
def test_documents_and_queries_match_sentence_transformers(splade_dirs: dict[str, Path], name: str) -> None:
    encoder = load_sparse(splade_dirs[name], backend="torch", device="cpu")
    reference = _st(splade_dirs[name])
    assert isinstance(encoder, SparseEncoder) and encoder.modifier is None
    assert encoder.max_length == MAX_SEQ_LENGTH
    relative = name == "bert-sum-log1p"
    theirs = reference.encode_document(TEXTS, convert_to_tensor=True)
    assert_parity(encoder.embed_documents(TEXTS), theirs, relative=relative)
    theirs = reference.encode_query(TEXTS, convert_to_tensor=True)
    assert_parity([encoder.embed_query(text) for text in TEXTS], theirs, relative=relative)
    assert_parity(encoder.embed_queries(TEXTS), theirs, relative=relative)


def test_inference_free_queries_weigh_their_distinct_tokens(splade_dirs: dict[str, Path]) -> None:
    encoder = load_sparse(splade_dirs["inference-free"], backend="torch", device="cpu")
    assert encoder.inference_free and encoder.fingerprint()["inference_free"] is True
    from safetensors.torch import load_file

    weight = load_file(str(splade_dirs["inference-free"] / "query_0_SparseStaticEmbedding" / "model.safetensors"))
    tokens = encoder.query.tokenizer.encode("hello hello world", add_special_tokens=False).ids
    vector = encoder.embed_query("hello hello world")
    expected = {t: float(weight["weight"][t]) for t in sorted(set(tokens)) if weight["weight"][t] != 0}
    assert vector.as_dict() == pytest.approx(expected)
    # no [CLS]/[SEP]: the query side adds no special tokens
    assert 101 not in vector.indices and 102 not in vector.indices


@pytest.mark.parametrize("name", ["bert", "inference-free"])
def test_pruning_keeps_the_largest_weights_as_sentence_transformers(splade_dirs: dict[str, Path], name: str) -> None:
    encoder = load_sparse(splade_dirs[name], backend="torch", device="cpu", max_active_dims=16)
    reference = _st(splade_dirs[name], max_active_dims=16)
    documents = encoder.embed_documents(TEXTS)
    assert all(len(vector.indices) <= 16 for vector in documents)
    assert_parity(documents, reference.encode_document(TEXTS, convert_to_tensor=True))
    assert_parity(encoder.embed_queries(TEXTS), reference.encode_query(TEXTS, convert_to_tensor=True))
    assert encoder.fingerprint()["max_active_dims"] == 16


def test_batched_equals_single_and_budget_does_not_matter(splade_dirs: dict[str, Path]) -> None:
    encoder = load_sparse(splade_dirs["distilbert"], backend="torch", device="cpu", batch_tokens=64)
    together = dense(encoder.embed_documents(TEXTS), encoder.vocabulary_size)
    alone = np.concatenate([dense(encoder.embed_documents([text]), encoder.vocabulary_size) for text in TEXTS])
    assert np.abs(together - alone).max() < 1e-5


def test_max_length_cuts_documents(splade_dirs: dict[str, Path]) -> None:
    encoder = load_sparse(splade_dirs["bert"], backend="torch", device="cpu", max_length=8)
    reference = _st(splade_dirs["bert"])
    reference.max_seq_length = 8
    assert_parity(encoder.embed_documents(TEXTS), reference.encode_document(TEXTS, convert_to_tensor=True))
    with pytest.raises(InputError, match="max_length=999"):
        load_sparse(splade_dirs["bert"], backend="torch", max_length=999)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "inference-free"])
def test_onnx_runtime_matches_sentence_transformers(splade_dirs: dict[str, Path], name: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    encoder = load_sparse(splade_dirs[name], backend="onnx", device="cpu", onnx_cache_dir=tmp_path)
    assert encoder.backend == "onnx"
    reference = _st(splade_dirs[name])
    assert_parity(encoder.embed_documents(TEXTS), reference.encode_document(TEXTS, convert_to_tensor=True))
    assert_parity(encoder.embed_queries(TEXTS), reference.encode_query(TEXTS, convert_to_tensor=True))
    # a second load finds the exported graph in the cache, keyed on the weights
    assert len(list(tmp_path.iterdir())) == 1
    again = load_sparse(splade_dirs[name], backend="onnx", device="cpu", onnx_cache_dir=tmp_path)
    assert again.embed_documents(TEXTS[:2]) == encoder.embed_documents(TEXTS[:2])
    assert len(list(tmp_path.iterdir())) == 1


def test_fingerprint_names_the_weights_and_settings(splade_dirs: dict[str, Path], tmp_path: Path) -> None:
    first = load_sparse(splade_dirs["bert"], backend="torch").fingerprint()
    assert first["kind"] == "splade" and first["name"] == str(splade_dirs["bert"])
    assert first["pooling"] == "max" and first["max_length"] == MAX_SEQ_LENGTH and first["max_active_dims"] is None
    assert load_sparse(splade_dirs["bert"], backend="torch", max_active_dims=8).fingerprint() != first
    other = load_sparse(splade_dirs["distilbert"], backend="torch").fingerprint()
    assert other["weights_digest"] != first["weights_digest"]
    json.dumps(first)  # stored in a collection's metadata


# -- bad input --------------------------------------------------------------------------------------


def test_empty_inputs_are_input_errors(splade_dirs: dict[str, Path]) -> None:
    encoder = load_sparse(splade_dirs["inference-free"], backend="torch")
    with pytest.raises(InputError, match="texts is empty"):
        encoder.embed_documents([])
    with pytest.raises(InputError, match=r"texts\[1\] is an empty string"):
        encoder.embed_documents(["fine", ""])
    with pytest.raises(InputError, match="empty string"):
        encoder.embed_query("")
    with pytest.raises(InputError, match="not a single str"):
        encoder.embed_documents("a text")  # type: ignore[arg-type]
    # a whitespace-only query has no tokens: on the static query route an empty vector (documented), as
    # sentence-transformers gives an all-zero one
    assert encoder.embed_query("   ") == SparseVector([], [])
    assert not _st(splade_dirs["inference-free"]).encode_query(["   "], convert_to_tensor=True).to_dense().any()


def test_a_dense_model_folder_is_refused(tiny_bert_dir: Path) -> None:
    with pytest.raises(
        ModelLoadError, match=r"\['Transformer', 'Pooling'\].*dense embedding model: load it with embedkit\.load"
    ):
        load_sparse(tiny_bert_dir)


def test_missing_files_are_named(splade_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such model directory"):
        load_sparse(tmp_path / "nowhere")
    broken = shutil.copytree(splade_dirs["bert"], tmp_path / "no-weights")
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no-weights has no weights"):
        load_sparse(broken)
    no_modules = shutil.copytree(splade_dirs["bert"], tmp_path / "no-modules")
    (no_modules / "modules.json").unlink()
    with pytest.raises(ModelLoadError, match=r"no modules\.json"):
        load_sparse(no_modules)
    no_static = shutil.copytree(splade_dirs["inference-free"], tmp_path / "no-static")
    (no_static / "query_0_SparseStaticEmbedding" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="query_0_SparseStaticEmbedding has no weights"):
        load_sparse(no_static)


def test_unimplemented_pooling_and_modules_are_refused(splade_dirs: dict[str, Path], tmp_path: Path) -> None:
    folder = shutil.copytree(splade_dirs["bert"], tmp_path / "mean")
    config = folder / "1_SpladePooling" / "config.json"
    config.write_text(json.dumps({"pooling_strategy": "mean", "activation_function": "relu"}))
    with pytest.raises(ModelLoadError, match=r"pooling_strategy='mean' is not implemented"):
        load_sparse(folder)
    config.write_text(json.dumps({"pooling_strategy": "max", "activation_function": "gelu"}))
    with pytest.raises(ModelLoadError, match=r"activation_function='gelu' is not implemented"):
        load_sparse(folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match=r"\['Transformer', 'SpladePooling', 'Normalize'\]"):
        load_sparse(folder)


def test_a_transformer_without_fill_mask_is_refused(splade_dirs: dict[str, Path], tmp_path: Path) -> None:
    folder = shutil.copytree(splade_dirs["bert"], tmp_path / "feature-extraction")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"transformer_task": "feature-extraction"}))
    with pytest.raises(ModelLoadError, match=r"transformer_task='feature-extraction', not 'fill-mask'"):
        load_sparse(folder)


def test_a_checkpoint_without_its_mlm_head_is_refused(
    splade_dirs: dict[str, Path], tmp_path: Path, minilm_dir: Path
) -> None:
    folder = shutil.copytree(splade_dirs["bert"], tmp_path / "headless")
    plain = _hf_checkpoint(tmp_path / "plain", minilm_dir, "bert-no-head", seed=0)
    shutil.copy(plain / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"headless: no masked-LM head in the weights"):
        load_sparse(folder)
