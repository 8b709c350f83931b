"""MPNet family: embedkit's module against transformers' MPNetModel and sentence-transformers on tiny random
checkpoints in the published layout (all-mpnet-base-v2: mean pooling + Normalize, 384 tokens of a 514-row
position table; multi-qa-mpnet-base-dot-v1: CLS pooling, no Normalize, all 512 positions).

The tokenizer is transformers' own MPNetTokenizer built offline from a vocabulary laid out as mpnet-base's
(<s> <pad> </s> <unk>, BERT's uncased WordPiece vocabulary, <mask>: 30527 ids), saved as tokenizer.json with
its RoBERTa-style `<s> A </s>` post-processor, as the hub's MPNet models ship it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import embedkit
from embedkit.errors import ModelLoadError
from embedkit.models.registry import detect_family

TEXTS = [
    "How many people live in London?",
    "Around 9 Million people live in London, and it is known for its financial district.",
    "x",
    "   ",
    "Unicode: naïve café, emoji 🎉 and <mask> as text",
    "relative positions reach far: " + "each token sees the others, near and far. " * 30,  # > 128 distances
    "word " * 700,  # past every limit: truncated
]

MPNET_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3; <mask> is the last id


def write_mpnet_tokenizer(target: Path, bert_vocab: Path, *, max_length: int) -> None:
    """tokenizer.json + tokenizer_config.json of transformers' MPNetTokenizer over mpnet-base's id layout."""
    from transformers import MPNetTokenizer

    tokens = [*MPNET_SPECIALS, *bert_vocab.read_text(encoding="utf-8").splitlines(), "<mask>"]
    tokenizer = MPNetTokenizer(vocab={token: i for i, token in enumerate(tokens)}, model_max_length=max_length)
    tokenizer.save_pretrained(str(target))


def write_mpnet(
    target: Path,
    tokenizer_dir: Path,
    *,
    seed: int = 0,
    style: str = "all-mpnet",
    prefix: str = "",
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 64,
    pooler: bool = True,
) -> Path:
    """A random MPNet saved by transformers (MPNetModel; `prefix` "mpnet." saves MPNetForMaskedLM) with
    config.json as all-mpnet-base-v2's (architectures MPNetForMaskedLM, layer_norm_eps 1e-5, 514 positions)
    and the sentence-transformers files of `style`: "all-mpnet" (mean, Normalize, 384 tokens) or
    "multi-qa-dot" (CLS, no Normalize, 512 tokens)."""
    from transformers import MPNetConfig, MPNetForMaskedLM, MPNetModel

    torch.manual_seed(seed)
    config = MPNetConfig(
        vocab_size=30527,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=514,
        layer_norm_eps=1e-5,
        relative_attention_num_buckets=32,
    )
    if prefix == "mpnet.":
        model: torch.nn.Module = MPNetForMaskedLM(config)
    else:
        model = MPNetModel(config, add_pooling_layer=pooler)
    with torch.no_grad():  # the learned bias is zero at init; make it matter
        bias = model.get_submodule(prefix.rstrip(".") + ".encoder" if prefix else "encoder").relative_attention_bias
        bias.weight.normal_(0.0, 1.0)
    target.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(target, safe_serialization=True)
    written = json.loads((target / "config.json").read_text())
    written["architectures"] = ["MPNetForMaskedLM"]  # as the hub's sentence-transformers MPNets say
    (target / "config.json").write_text(json.dumps(written, indent=2))

    max_seq_length, pooling, normalize = {"all-mpnet": (384, "mean", True), "multi-qa-dot": (512, "cls", False)}[style]
    write_mpnet_tokenizer(target, tokenizer_dir / "vocab.txt", max_length=512)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (target / "2_Normalize").mkdir(exist_ok=True)
    (target / "modules.json").write_text(json.dumps(modules, indent=2))
    (target / "1_Pooling").mkdir(exist_ok=True)
    modes = {f"pooling_mode_{m}": False for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")}
    modes["pooling_mode_cls_token" if pooling == "cls" else "pooling_mode_mean_tokens"] = True
    (target / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": hidden_size, **modes}))
    (target / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    return target


# -- references ----------------------------------------------------------------------------------------


def transformers_reference(model_dir: Path, texts: list[str], *, max_length: int, pooling: str) -> np.ndarray:
    """Pooled last_hidden_state of transformers' MPNetModel (from_pretrained on the same folder), unnormalised."""
    from transformers import AutoTokenizer, MPNetModel

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model, info = MPNetModel.from_pretrained(str(model_dir), add_pooling_layer=False, output_loading_info=True)
    assert not any(info.get(key) for key in ("missing_keys", "mismatched_keys")), info
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any() and batch["input_ids"].shape[1] == max_length
    with torch.no_grad():
        hidden = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    if pooling == "cls":
        return hidden[:, 0].numpy()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


def st_reference(model_dir: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    return model.encode(texts, batch_size=len(texts), convert_to_numpy=True)


@pytest.fixture(scope="module")
def all_mpnet_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return write_mpnet(tmp_path_factory.mktemp("all-mpnet"), minilm_dir, seed=1)


@pytest.fixture(scope="module")
def multi_qa_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return write_mpnet(tmp_path_factory.mktemp("multi-qa"), minilm_dir, seed=2, style="multi-qa-dot")


# -- parity --------------------------------------------------------------------------------------------


def test_relative_buckets_equal_transformers() -> None:
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    from embedkit.models.mpnet import relative_buckets

    T = 1100
    positions = torch.arange(T)
    expected = MPNetEncoder.relative_position_bucket(positions[None, :] - positions[:, None])
    assert torch.equal(relative_buckets(T, torch.device("cpu")), expected)


def test_all_mpnet_style_matches_transformers_and_sentence_transformers(all_mpnet_dir: Path) -> None:
    embedder = embedkit.load(all_mpnet_dir, device="cpu", backend="torch")
    info = embedder.describe()
    assert embedder.family == "mpnet" and info["pooling"] == ["mean"] and embedder.max_input_tokens == 384
    assert embedder.count_tokens(["Hello world!"]) == [3]  # <s> hello world ! </s> less the 2 specials
    raw = embedder.embed(TEXTS, normalize=False)
    expected = transformers_reference(all_mpnet_dir, TEXTS, max_length=384, pooling="mean")
    assert np.abs(raw - expected).max() < 1e-5
    # sentence-transformers runs the folder's Normalize module; embedkit normalises by default
    assert np.abs(embedder.embed(TEXTS) - st_reference(all_mpnet_dir, TEXTS)).max() < 1e-5
    assert embedder.count_tokens(TEXTS)[-1] > 384  # so the last text was cut at the limit, in both


def test_multi_qa_style_matches_at_the_position_table_end(multi_qa_dir: Path) -> None:
    """CLS pooling, no Normalize, max_seq_length 512 = every row of the 514-row table (the last one read)."""
    embedder = embedkit.load(multi_qa_dir, device="cpu", backend="torch")
    assert embedder.describe()["pooling"] == ["cls"] and embedder.max_input_tokens == 512
    raw = embedder.embed(TEXTS, normalize=False)
    assert np.abs(raw - transformers_reference(multi_qa_dir, TEXTS, max_length=512, pooling="cls")).max() < 1e-5
    assert np.abs(raw - st_reference(multi_qa_dir, TEXTS)).max() < 1e-5


def test_onnx_matches_torch(tmp_path: Path, multi_qa_dir: Path) -> None:
    """The relative bias exports (its bucket table as a constant gather): fp32 ONNX Runtime equals torch."""
    pytest.importorskip("onnxruntime")
    torch_side = embedkit.load(multi_qa_dir, device="cpu", backend="torch")
    onnx_side = embedkit.load(multi_qa_dir, device="cpu", backend="onnx", onnx_cache_dir=tmp_path / "cache")
    assert onnx_side.backend == "onnx" and onnx_side.family == "mpnet"
    got, want = onnx_side.embed(TEXTS, normalize=False), torch_side.embed(TEXTS, normalize=False)
    assert np.abs(got - want).max() < 1e-5


def test_batched_equals_single(multi_qa_dir: Path) -> None:
    embedder = embedkit.load(multi_qa_dir, device="cpu", backend="torch")
    batched = embedder.embed(TEXTS)
    single = np.stack([embedder.embed([text])[0] for text in TEXTS])
    assert np.abs(batched - single).max() < 1e-5
    embedder.batch_tokens = 600  # several token-budget batches; the input order comes back
    assert np.abs(embedder.embed(TEXTS) - batched).max() < 1e-5


def test_masked_lm_checkpoint_loads_the_same(tmp_path: Path, minilm_dir: Path, all_mpnet_dir: Path) -> None:
    """Saved from MPNetForMaskedLM: `mpnet.`-prefixed encoder and an `lm_head` the embedder ignores; equal to the
    MPNetModel layout holding the same encoder tensors."""
    masked = write_mpnet(tmp_path / "mlm", minilm_dir, seed=3, prefix="mpnet.")
    names = set(load_file(str(masked / "model.safetensors")))
    assert "mpnet.encoder.relative_attention_bias.weight" in names and any(n.startswith("lm_head.") for n in names)
    plain = tmp_path / "plain"
    plain.mkdir()
    for path in masked.iterdir():
        if path.is_file() and path.name != "model.safetensors":
            (plain / path.name).write_bytes(path.read_bytes())
    for folder in ("1_Pooling", "2_Normalize"):
        (plain / folder).mkdir()
    (plain / "1_Pooling" / "config.json").write_bytes((masked / "1_Pooling" / "config.json").read_bytes())
    state = load_file(str(masked / "model.safetensors"))
    save_file(
        {k[len("mpnet.") :]: v for k, v in state.items() if k.startswith("mpnet.")}, str(plain / "model.safetensors")
    )
    a = embedkit.load(masked, device="cpu", backend="torch").embed(TEXTS)
    b = embedkit.load(plain, device="cpu", backend="torch").embed(TEXTS)
    np.testing.assert_array_equal(a, b)


def test_relative_bias_is_read(tmp_path: Path, all_mpnet_dir: Path) -> None:
    """The bias table matters: zeroing it changes the vectors (the parity above is not vacuous)."""
    other = tmp_path / "zero-bias"
    other.mkdir()
    for path in all_mpnet_dir.rglob("*"):
        if path.is_file():
            (other / path.relative_to(all_mpnet_dir)).parent.mkdir(parents=True, exist_ok=True)
            (other / path.relative_to(all_mpnet_dir)).write_bytes(path.read_bytes())
    state = load_file(str(other / "model.safetensors"))
    state["encoder.relative_attention_bias.weight"] = torch.zeros_like(state["encoder.relative_attention_bias.weight"])
    save_file(state, str(other / "model.safetensors"))
    a = embedkit.load(all_mpnet_dir, device="cpu", backend="torch").embed(TEXTS[:3])
    b = embedkit.load(other, device="cpu", backend="torch").embed(TEXTS[:3])
    assert np.abs(a - b).max() > 1e-3


# -- detection and errors ------------------------------------------------------------------------------


def test_detected_by_config_and_tensors(all_mpnet_dir: Path) -> None:
    config = json.loads((all_mpnet_dir / "config.json").read_text())
    names = set(load_file(str(all_mpnet_dir / "model.safetensors")))
    assert "pooler.dense.weight" in names and "embeddings.token_type_embeddings.weight" not in names
    detection = detect_family(config, names, "m")
    assert detection.family.name == "mpnet"
    assert detection.reasons == (
        "config.json: model_type/architectures name MPNet",
        "tensors: encoder.relative_attention_bias.weight",
    )
    # a config that names nothing still finds MPNet by its tensors (never BERT, whose sign it also holds)
    assert detect_family({}, names, "m").family.name == "mpnet"
    with pytest.raises(ModelLoadError, match=r"config.json says bert .* weights hold mpnet tensors"):
        detect_family({"model_type": "bert"}, names, "m")


def test_models_inspect_names_mpnet_and_why(all_mpnet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from embedkit.cli import main

    assert main(["models", "inspect", str(all_mpnet_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "mpnet" and info["dimension"] == 32 and info["max_input_tokens"] == 384
    assert info["pooling"] == ["mean"]
    assert "config.json: model_type/architectures name MPNet" in info["detected_by"]
    assert "tensors: encoder.relative_attention_bias.weight" in info["detected_by"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"relative_attention_num_buckets": 64}, "relative_attention_num_buckets=64 is not supported"),
        ({"max_position_embeddings": 2}, "max_position_embeddings=2 leaves no position"),
    ],
)
def test_unsupported_settings_are_named(tmp_path: Path, minilm_dir: Path, change: dict, message: str) -> None:
    model_dir = write_mpnet(tmp_path / "m", minilm_dir, seed=4)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(change)
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        embedkit.load(model_dir, device="cpu", backend="torch")


def test_missing_bias_tensor_is_named(tmp_path: Path, minilm_dir: Path) -> None:
    model_dir = write_mpnet(tmp_path / "m", minilm_dir, seed=5)
    state = load_file(str(model_dir / "model.safetensors"))
    del state["encoder.layer.1.attention.attn.o.weight"]
    save_file(state, str(model_dir / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"missing tensors: encoder\.layer\.1\.attention\.attn\.o\.weight"):
        embedkit.load(model_dir, device="cpu", backend="torch")


def test_past_the_position_table_is_refused(tmp_path: Path, minilm_dir: Path) -> None:
    model_dir = write_mpnet(tmp_path / "m", minilm_dir, seed=6)
    (model_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 513}))
    with pytest.raises(ModelLoadError, match="exceeds the model's 512 positions"):
        embedkit.load(model_dir, device="cpu", backend="torch")
