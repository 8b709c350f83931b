"""BERT family: embedkit's own module against transformers' BertModel on tiny random checkpoints."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import embedkit
from embedkit.errors import ModelLoadError, ModelNotFoundError

from ..conftest import write_tiny_bert

TEXTS = [
    "A short sentence.",
    "A somewhat longer sentence about transformers and embeddings, with punctuation!",
    "Unicode: naïve café, 日本語のテキスト, emoji 🎉",
    "   ",
    "def f(x):\n    return x * 2  # code",
    "word " * 80,  # past max_seq_length 64: truncated like transformers with truncation=True
]


def reference_vectors(model_dir: Path, texts: list[str], pooling: str) -> np.ndarray:
    """transformers' own BertModel + the pooling, computed independently of embedkit."""
    from transformers import AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = BertModel.from_pretrained(str(model_dir), add_pooling_layer=False).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    if pooling == "cls":
        return hidden[:, 0].numpy()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_matches_transformers_bert(tmp_path: Path, minilm_dir: Path, pooling: str) -> None:
    model_dir = write_tiny_bert(tmp_path / "m", minilm_dir, pooling=pooling, seed=1)
    ours = embedkit.load(model_dir, device="cpu").embed(TEXTS, normalize=False)
    expected = reference_vectors(model_dir, TEXTS, pooling)
    assert ours.shape == expected.shape == (len(TEXTS), 32)
    assert np.abs(ours - expected).max() < 1e-5


def test_batched_equals_single(tiny_bert_dir: Path) -> None:
    embedder = embedkit.load(tiny_bert_dir, device="cpu")
    batched = embedder.embed(TEXTS)
    single = np.stack([embedder.embed([text])[0] for text in TEXTS])
    assert np.abs(batched - single).max() < 1e-5
    embedder.batch_tokens = 64  # forces several token-budget batches, order must be restored
    assert np.abs(embedder.embed(TEXTS) - batched).max() < 1e-5


def test_sharded_checkpoint_equals_single_file(tmp_path: Path, minilm_dir: Path) -> None:
    single = write_tiny_bert(tmp_path / "single", minilm_dir, seed=2)
    sharded = write_tiny_bert(tmp_path / "sharded", minilm_dir, seed=2, max_shard_size="300KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    a = embedkit.load(single, device="cpu").embed(TEXTS)
    b = embedkit.load(sharded, device="cpu").embed(TEXTS)
    np.testing.assert_array_equal(a, b)


def test_masked_lm_checkpoint_with_bert_prefix_loads(tmp_path: Path, minilm_dir: Path) -> None:
    model_dir = write_tiny_bert(tmp_path / "mlm", minilm_dir, masked_lm=True, seed=3)
    names = load_file(str(model_dir / "model.safetensors")).keys()
    assert any(name.startswith("bert.") for name in names) and any(name.startswith("cls.") for name in names)
    ours = embedkit.load(model_dir, device="cpu").embed(TEXTS, normalize=False)
    assert np.abs(ours - reference_vectors(model_dir, TEXTS, "mean")).max() < 1e-5


def _rewrite_weights(model_dir: Path, change) -> None:
    path = model_dir / "model.safetensors"
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


def test_missing_tensor_is_named(tmp_path: Path, tiny_bert_dir: Path) -> None:
    broken = Path(shutil.copytree(tiny_bert_dir, tmp_path / "broken"))
    _rewrite_weights(broken, lambda s: s.pop("encoder.layer.1.output.dense.weight"))
    with pytest.raises(ModelLoadError, match=r"missing tensors: encoder\.layer\.1\.output\.dense\.weight"):
        embedkit.load(broken)


def test_unexpected_tensor_is_named(tmp_path: Path, tiny_bert_dir: Path) -> None:
    broken = Path(shutil.copytree(tiny_bert_dir, tmp_path / "extra"))
    _rewrite_weights(broken, lambda s: s.update({"encoder.layer.0.surprise.weight": torch.zeros(2)}))
    with pytest.raises(ModelLoadError, match=r"unexpected tensors: encoder\.layer\.0\.surprise\.weight"):
        embedkit.load(broken)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path: Path, tiny_bert_dir: Path) -> None:
    broken = Path(shutil.copytree(tiny_bert_dir, tmp_path / "shape"))
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] = 48
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight.*\(64, 32\).*\(48, 32\)"):
        embedkit.load(broken)


def test_unsupported_architecture_is_named(tmp_path: Path, tiny_bert_dir: Path) -> None:
    other = Path(shutil.copytree(tiny_bert_dir, tmp_path / "other"))
    config = json.loads((other / "config.json").read_text())
    config.update(model_type="t5", architectures=["T5EncoderModel"])
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"unsupported architecture \(model_type='t5'"):
        embedkit.load(other)


def test_name_or_path_does_not_decide(tmp_path: Path, tiny_bert_dir: Path) -> None:
    renamed = Path(shutil.copytree(tiny_bert_dir, tmp_path / "renamed"))
    config = json.loads((renamed / "config.json").read_text())
    config["_name_or_path"] = "jinaai/jina-embeddings-v2-base-en"
    (renamed / "config.json").write_text(json.dumps(config))
    assert embedkit.load(renamed).family == "bert"


def test_pickled_weights_need_allow_pickle(tmp_path: Path, tiny_bert_dir: Path) -> None:
    pickled = Path(shutil.copytree(tiny_bert_dir, tmp_path / "pickled"))
    state = load_file(str(pickled / "model.safetensors"))
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        embedkit.load(pickled)
    loaded = embedkit.load(pickled, allow_pickle=True).embed(TEXTS)
    np.testing.assert_allclose(loaded, embedkit.load(tiny_bert_dir).embed(TEXTS), atol=1e-6)


def test_truncated_safetensors_is_named(tmp_path: Path, tiny_bert_dir: Path) -> None:
    broken = Path(shutil.copytree(tiny_bert_dir, tmp_path / "truncated"))
    path = broken / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"model.safetensors"):
        embedkit.load(broken)


def test_hub_id_resolves_from_local_cache(tmp_path: Path, tiny_bert_dir: Path) -> None:
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-bert"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_bert_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    embedder = embedkit.load("acme/tiny-bert", cache_dir=cache)
    assert embedder.model_id == "acme/tiny-bert"
    np.testing.assert_allclose(embedder.embed(TEXTS), embedkit.load(tiny_bert_dir).embed(TEXTS), atol=1e-6)
    with pytest.raises(ModelNotFoundError, match=r"acme/absent.*could not be fetched"):
        embedkit.load("acme/absent", cache_dir=cache)


def test_max_seq_length_past_the_position_table_is_refused(tmp_path: Path, tiny_bert_dir: Path) -> None:
    # a learned position table has no row 512; RoPE/ALiBi families accept it (see test_gte)
    broken = Path(shutil.copytree(tiny_bert_dir, tmp_path / "long"))
    positions = json.loads((broken / "config.json").read_text())["max_position_embeddings"]
    (broken / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": positions + 1}))
    with pytest.raises(ModelLoadError, match=rf"sentence_bert_config\.json: max_seq_length {positions + 1} exceeds"):
        embedkit.load(broken)


def test_filled_in_defaults_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    from embedkit.models.bert import BertConfig
    from embedkit.models.loading import config_from_dict

    raw = {"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2}
    raw |= {"intermediate_size": 16, "hidden_act": "relu", "layer_norm_eps": None}
    with caplog.at_level(logging.INFO, logger="embedkit.models.loading"):
        config = config_from_dict(BertConfig, raw, "m/config.json", defaults={"pad_token_id": 1})
    assert config.hidden_act == "relu" and config.pad_token_id == 1 and config.layer_norm_eps == 1e-12
    (record,) = caplog.records
    assert record.getMessage() == (
        "m/config.json: not set, so assumed: max_position_embeddings=512, type_vocab_size=2, "
        "layer_norm_eps=1e-12, pad_token_id=1"
    )
    with pytest.raises(ModelLoadError, match="missing required field"):
        config_from_dict(BertConfig, {"vocab_size": 10}, "m/config.json")
