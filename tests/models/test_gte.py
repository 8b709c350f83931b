"""GTE v1.5 / gte-multilingual ("NewModel") family: golden vectors and transformers' native `gte` port.

Golden: shared/fixtures/gte-v1.5 holds two tiny checkpoints in the published layout with vectors
computed by the original `Alibaba-NLP/new-impl` remote code. Native: tiny random checkpoints written
here in the published layout (model_type "new", `qkv_proj`, `up_gate_proj`, `attn_ln`, ...) are
compared with transformers' own `GteModel`, loaded through `from_pretrained` from a native config.json
(model_type "gte") written beside the same weight files, so that transformers' checkpoint conversion
(prefix, q|k|v chunks, up|gate chunks) is its own, not ours. NTK scaling is mapped explicitly: the
remote code's inv_freq = 1 / (theta f)^(2i/d) / f^(2/d) is transformers' "linear" rope with
rope_theta = theta * f and factor = f^(2/d).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import embedkit
from embedkit.errors import ModelLoadError

from ..conftest import write_st_files

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "gte-v1.5"

AUTO_MAP = {
    "AutoConfig": "Alibaba-NLP/new-impl--configuration.NewConfig",
    "AutoModel": "Alibaba-NLP/new-impl--modeling.NewModel",
    "AutoModelForMaskedLM": "Alibaba-NLP/new-impl--modeling.NewForMaskedLM",
    "AutoModelForSequenceClassification": "Alibaba-NLP/new-impl--modeling.NewForSequenceClassification",
    "AutoModelForTokenClassification": "Alibaba-NLP/new-impl--modeling.NewForTokenClassification",
}

TEXTS = [
    "A short sentence.",
    "A somewhat longer sentence about transformers and embeddings, with punctuation!",
    "Unicode: naïve café, 日本語のテキスト, emoji 🎉",
    "def f(x):\n    return x * 2  # code",
    "x",
    "Rotary positions matter for long inputs: " + "each token attends to its neighbours and to far ones. " * 12,
]
LONG_TEXTS = [*TEXTS, "word " * 300, "A much longer text that will be cut at the limit. " * 40]

MAX_SEQ_LENGTH = 256

# -- checkpoints in the published layout -------------------------------------------------------------


def original_tensors(
    *,
    seed: int,
    vocab_size: int,
    hidden_size: int,
    num_hidden_layers: int,
    intermediate_size: int,
    type_vocab_size: int,
    pack_qkv: bool = True,
    layer_norm_type: str = "layer_norm",
) -> dict[str, torch.Tensor]:
    """Random weights under new-impl's `NewModel` state-dict names (no prefix)."""
    g = torch.Generator().manual_seed(seed)
    H, I = hidden_size, intermediate_size

    def randn(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std + mean

    def linear(name: str, out: int, inp: int, bias: bool = True) -> dict[str, torch.Tensor]:
        tensors = {f"{name}.weight": randn(out, inp, std=0.1)}
        if bias:
            tensors[f"{name}.bias"] = randn(out, std=0.05)
        return tensors

    def norm(name: str, rms: bool = False) -> dict[str, torch.Tensor]:
        tensors = {f"{name}.weight": randn(H, std=0.1, mean=1.0)}
        if not rms:
            tensors[f"{name}.bias"] = randn(H, std=0.1)
        return tensors

    state = {"embeddings.word_embeddings.weight": randn(vocab_size, H, std=0.5)}
    if type_vocab_size:
        state["embeddings.token_type_embeddings.weight"] = randn(type_vocab_size, H, std=0.5)
    state.update(norm("embeddings.LayerNorm"))
    rms = layer_norm_type == "rms_norm"
    for n in range(num_hidden_layers):
        p = f"encoder.layer.{n}."
        if pack_qkv:
            state.update(linear(p + "attention.qkv_proj", 3 * H, H))
        else:
            for part in "qkv":
                state.update(linear(p + f"attention.{part}_proj", H, H))
        state.update(linear(p + "attention.o_proj", H, H))
        state.update(norm(p + "attn_ln", rms))
        state.update(linear(p + "mlp.up_gate_proj", 2 * I, H, bias=False))
        state.update(linear(p + "mlp.down_proj", H, I))
        state.update(norm(p + "mlp_ln", rms))
    return state


def save_weights(target: Path, state: dict[str, torch.Tensor], shards: int = 1) -> None:
    """model.safetensors, or `shards` files plus model.safetensors.index.json, as save_pretrained writes them."""
    if shards == 1:
        save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(state)
    weight_map = {}
    for index in range(shards):
        filename = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: state[name] for name in names[index::shards]}
        save_file(part, str(target / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, filename))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index_json = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (target / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2))


def write_gte(
    target: Path,
    tokenizer_dir: Path,
    *,
    seed: int = 0,
    type_vocab_size: int = 1,
    rope_theta: float = 160000.0,
    ntk_factor: float | None = None,
    prefix: str = "",
    shards: int = 1,
    pack_qkv: bool = True,
    layer_norm_type: str = "layer_norm",
    extra_tensors: dict[str, torch.Tensor] | None = None,
    **overrides: object,
) -> Path:
    """A tiny random GTE checkpoint as the Hub publishes one: original config.json, names, ST files."""
    config = {
        "architectures": ["NewModel"],
        "auto_map": AUTO_MAP,
        "model_type": "new",
        "vocab_size": 30522,  # the all-MiniLM tokenizer's
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,  # head dim 16
        "intermediate_size": 48,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 512,
        "type_vocab_size": type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_type": layer_norm_type,
        "layer_norm_eps": 1e-12,
        "position_embedding_type": "rope",
        "rope_theta": rope_theta,
        "rope_scaling": {"type": "ntk", "factor": ntk_factor} if ntk_factor else None,
        "classifier_dropout": None,
        "pack_qkv": pack_qkv,
        "unpad_inputs": False,
        "use_memory_efficient_attention": False,
        "logn_attention_scale": False,
        "logn_attention_clip1": False,
        "pad_token_id": 0,
        "torch_dtype": "float32",
        "transformers_version": "4.39.1",
    }
    config.update(overrides)
    state = original_tensors(
        seed=seed,
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_hidden_layers=config["num_hidden_layers"],
        intermediate_size=config["intermediate_size"],
        type_vocab_size=type_vocab_size,
        pack_qkv=pack_qkv,
        layer_norm_type=layer_norm_type,
    )
    state = {prefix + name: tensor for name, tensor in state.items()}
    state.update(extra_tensors or {})
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    save_weights(target, state, shards)
    return write_st_files(
        target, tokenizer_dir, hidden_size=config["hidden_size"], pooling="cls", max_seq_length=MAX_SEQ_LENGTH
    )


# -- the native transformers reference ---------------------------------------------------------------


def native_reference(model_dir: Path, tokenizer_dir: Path, tmp_path: Path, texts: list[str]) -> np.ndarray:
    """CLS vectors (last_hidden_state[:, 0]) of transformers' native GteModel on the same weight files.

    The native config is built explicitly (never from the original config.json, whose auto_map asks
    for remote code); the weight files are copied unchanged and converted by `from_pretrained`.
    """
    from transformers import AutoTokenizer, GteConfig, GteModel

    original = json.loads((model_dir / "config.json").read_text())
    head_dim = original["hidden_size"] // original["num_attention_heads"]
    theta = original["rope_theta"]
    scaling = original.get("rope_scaling")
    if scaling:
        assert scaling["type"] == "ntk"
        f = scaling["factor"]
        rope = {"rope_type": "linear", "rope_theta": theta * f, "factor": f ** (2 / head_dim)}
    else:
        rope = {"rope_type": "default", "rope_theta": theta}
    native = GteConfig(
        vocab_size=original["vocab_size"],
        hidden_size=original["hidden_size"],
        num_hidden_layers=original["num_hidden_layers"],
        num_attention_heads=original["num_attention_heads"],
        intermediate_size=original["intermediate_size"],
        hidden_act=original["hidden_act"],
        max_position_embeddings=original["max_position_embeddings"],
        type_vocab_size=original["type_vocab_size"],
        layer_norm_eps=original["layer_norm_eps"],
        pad_token_id=original["pad_token_id"],
        rope_parameters=rope,
    )
    ref_dir = tmp_path / "native-reference"
    ref_dir.mkdir()
    native.save_pretrained(ref_dir)
    for path in model_dir.glob("model*.safetensors*"):
        shutil.copy(path, ref_dir / path.name)
    model, info = GteModel.from_pretrained(ref_dir, attn_implementation="eager", output_loading_info=True)
    assert not any(info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch should be padded"
    with torch.no_grad():
        hidden = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return hidden[:, 0].numpy()


# -- golden vectors from the original remote code ----------------------------------------------------


def _golden_cases() -> list[tuple[str, dict]]:
    path = FIXTURES / "expected.json"
    if not path.is_file():
        return []
    expected = json.loads(path.read_text())
    return [(variant, case) for variant, spec in expected["variants"].items() for case in spec["cases"]]


@pytest.mark.parametrize(
    ("variant", "case"),
    _golden_cases() or [pytest.param(None, None, marks=pytest.mark.skip(reason=f"{FIXTURES} is absent"))],
)
def test_golden_vectors(tmp_path: Path, variant: str, case: dict) -> None:
    model_dir = FIXTURES / f"model-{variant}"
    if not model_dir.is_dir():
        pytest.skip(f"{model_dir} is absent")

    # sentence_bert_config.json says 8192 tokens, config.json 512 positions (as the published
    # gte-*-v1.5 pairs): RoPE has no position table, so the sentence-transformers limit stands
    embedder = embedkit.load(model_dir, device="cpu")
    settings = json.loads((model_dir / "sentence_bert_config.json").read_text())
    assert embedder.max_input_tokens == settings["max_seq_length"] == 8192
    assert embedder.family == "gte" and embedder.describe()["pooling"] == ["cls"]
    assert embedder.count_tokens(case["inputs"]) == [len(ids) - 2 for ids in case["input_ids"]]
    ours = embedder.embed(case["inputs"], normalize=case["normalized"])
    expected = np.asarray(case["embeddings"], dtype=np.float32)
    assert ours.shape == expected.shape == (len(case["inputs"]), case["dim"])
    assert np.abs(ours - expected).max() < 1e-5


def test_golden_fixture_layout() -> None:
    """The fixtures are what the tests above claim: original names, NTK in one, no token types in it."""
    if not (FIXTURES / "model-ntk").is_dir():
        pytest.skip(f"{FIXTURES} is absent")
    ntk = json.loads((FIXTURES / "model-ntk" / "config.json").read_text())
    assert ntk["model_type"] == "new" and ntk["rope_scaling"] == {"factor": 2.0, "type": "ntk"}
    names = set(load_file(str(FIXTURES / "model-ntk" / "model.safetensors")))
    assert "encoder.layer.0.attention.qkv_proj.weight" in names
    assert "embeddings.token_type_embeddings.weight" not in names


# -- transformers' native gte ------------------------------------------------------------------------

NATIVE_CASES = {
    # name: write_gte settings
    "plain-types2": dict(type_vocab_size=2, rope_theta=160000.0, seed=1),
    "ntk-types0-sharded": dict(type_vocab_size=0, rope_theta=500000.0, ntk_factor=2.0, seed=2, shards=3),
    "ntk8-types1-new-prefix": dict(type_vocab_size=1, rope_theta=20000.0, ntk_factor=8.0, seed=3, prefix="new."),
}


@pytest.mark.parametrize("name", list(NATIVE_CASES))
def test_matches_transformers_native_gte(tmp_path: Path, minilm_dir: Path, name: str) -> None:
    settings = NATIVE_CASES[name]
    model_dir = write_gte(tmp_path / name, minilm_dir, **settings)
    if settings.get("shards", 1) > 1:
        assert (model_dir / "model.safetensors.index.json").is_file()
        assert len(list(model_dir.glob("model-*.safetensors"))) == settings["shards"]
        assert not (model_dir / "model.safetensors").exists()
    names = set().union(*(load_file(str(p)).keys() for p in model_dir.glob("*.safetensors")))
    assert (
        "new.embeddings.token_type_embeddings.weight" in names or "embeddings.token_type_embeddings.weight" in names
    ) == (settings["type_vocab_size"] > 0)

    ours = embedkit.load(model_dir, device="cpu").embed(TEXTS, normalize=False)
    expected = native_reference(model_dir, minilm_dir, tmp_path, TEXTS)
    assert ours.shape == expected.shape == (len(TEXTS), 32)
    assert np.abs(ours - expected).max() < 1e-5


def test_ntk_scaling_changes_the_vectors(tmp_path: Path, minilm_dir: Path) -> None:
    """The NTK case above is not vacuous: the same weights without rope_scaling embed differently."""
    scaled = write_gte(tmp_path / "ntk", minilm_dir, rope_theta=10000.0, ntk_factor=4.0, seed=4)
    plain = write_gte(tmp_path / "plain", minilm_dir, rope_theta=10000.0, seed=4)
    a = embedkit.load(scaled, device="cpu").embed(TEXTS, normalize=False)
    b = embedkit.load(plain, device="cpu").embed(TEXTS, normalize=False)
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_allclose(a, native_reference(scaled, minilm_dir, tmp_path, TEXTS), atol=1e-5, rtol=0)


def test_rope_parameters_config_forms_agree(tmp_path: Path, minilm_dir: Path) -> None:
    """rope_theta + rope_scaling (published), rope_parameters with type ntk, and transformers' linear form."""
    published = write_gte(tmp_path / "published", minilm_dir, rope_theta=500000.0, ntk_factor=2.0, seed=5)
    expected = embedkit.load(published, device="cpu").embed(TEXTS)
    head_dim = 16
    forms = {
        "ntk": {"rope_type": "ntk", "factor": 2.0, "rope_theta": 500000.0},
        "linear": {"rope_type": "linear", "factor": 2.0 ** (2 / head_dim), "rope_theta": 1000000.0},
    }
    for form, parameters in forms.items():
        other = Path(shutil.copytree(published, tmp_path / form))
        config = json.loads((other / "config.json").read_text())
        del config["rope_theta"], config["rope_scaling"]
        config["rope_parameters"] = parameters
        (other / "config.json").write_text(json.dumps(config))
        np.testing.assert_allclose(embedkit.load(other, device="cpu").embed(TEXTS), expected, atol=1e-6, rtol=0)


# -- loading and batching ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gte_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return write_gte(tmp_path_factory.mktemp("tiny-gte"), minilm_dir, rope_theta=500000.0, ntk_factor=2.0, seed=6)


def test_batched_equals_single(tiny_gte_dir: Path) -> None:
    embedder = embedkit.load(tiny_gte_dir, device="cpu")
    assert embedder.family == "gte" and embedder.max_input_tokens == MAX_SEQ_LENGTH
    batched = embedder.embed(LONG_TEXTS)
    single = np.stack([embedder.embed([text])[0] for text in LONG_TEXTS])
    assert np.abs(batched - single).max() < 1e-5
    embedder.batch_tokens = 300  # several token-budget batches, order must be restored
    assert np.abs(embedder.embed(LONG_TEXTS) - batched).max() < 1e-5


# Options no published checkpoint sets; checked against new-impl's code outside the test suite
# (max abs diff < 1e-6), here only that they load and stay padding-invariant.
RARE_SETTINGS = {
    "rms_norm": dict(layer_norm_type="rms_norm", ntk_factor=2.0),
    "logn_scale": dict(logn_attention_scale=True, max_position_embeddings=300),
    "ntk_mixed_b": dict(rope_scaling={"type": "ntk", "factor": 4.0, "mixed_b": 0.75}),
}


@pytest.mark.parametrize("name", list(RARE_SETTINGS))
def test_rare_settings_are_padding_invariant(tmp_path: Path, minilm_dir: Path, name: str) -> None:
    model_dir = write_gte(tmp_path / name, minilm_dir, rope_theta=10000.0, seed=7, **RARE_SETTINGS[name])
    plain = write_gte(tmp_path / "plain", minilm_dir, rope_theta=10000.0, seed=7)
    if name == "rms_norm":
        assert "encoder.layer.0.attn_ln.bias" not in load_file(str(model_dir / "model.safetensors"))
    embedder = embedkit.load(model_dir, device="cpu")
    batched = embedder.embed(LONG_TEXTS)
    single = np.stack([embedder.embed([text])[0] for text in LONG_TEXTS])
    assert np.isfinite(batched).all() and np.abs(batched - single).max() < 1e-5
    if name != "rms_norm":  # the setting is not silently ignored
        assert np.abs(batched - embedkit.load(plain, device="cpu").embed(LONG_TEXTS)).max() > 1e-4


def test_new_prefixed_checkpoint_loads_the_same(tmp_path: Path, minilm_dir: Path, tiny_gte_dir: Path) -> None:
    """Saved from a NewFor* head class: `new.` prefix, plus head tensors that an embedder ignores."""
    heads = {"new.pooler.dense.weight": torch.zeros(32, 32), "classifier.weight": torch.zeros(2, 32)}
    prefixed = write_gte(
        tmp_path / "prefixed",
        minilm_dir,
        rope_theta=500000.0,
        ntk_factor=2.0,
        seed=6,
        prefix="new.",
        extra_tensors=heads,
        architectures=["NewForTokenClassification"],
    )
    assert "new.embeddings.word_embeddings.weight" in load_file(str(prefixed / "model.safetensors"))
    a = embedkit.load(prefixed, device="cpu").embed(TEXTS)
    b = embedkit.load(tiny_gte_dir, device="cpu").embed(TEXTS)
    np.testing.assert_array_equal(a, b)


def test_unpacked_qkv_equals_packed(tmp_path: Path, minilm_dir: Path, tiny_gte_dir: Path) -> None:
    """pack_qkv false: separate q_proj/k_proj/v_proj, the row blocks [q | k | v] of qkv_proj."""
    unpacked = Path(shutil.copytree(tiny_gte_dir, tmp_path / "unpacked"))
    state = load_file(str(unpacked / "model.safetensors"))
    for name in [n for n in state if ".qkv_proj." in n]:
        for part, tensor in zip("qkv", state.pop(name).chunk(3, dim=0), strict=True):
            state[name.replace("qkv_proj", f"{part}_proj")] = tensor.contiguous()
    save_file(state, str(unpacked / "model.safetensors"))
    config = json.loads((unpacked / "config.json").read_text())
    config["pack_qkv"] = False
    (unpacked / "config.json").write_text(json.dumps(config))
    a = embedkit.load(unpacked, device="cpu").embed(TEXTS)
    b = embedkit.load(tiny_gte_dir, device="cpu").embed(TEXTS)
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("prefix", ["", "new."])
def test_missing_tensor_is_named(tmp_path: Path, minilm_dir: Path, prefix: str) -> None:
    model_dir = write_gte(tmp_path / "broken", minilm_dir, prefix=prefix, seed=8)
    path = model_dir / "model.safetensors"
    state = load_file(str(path))
    del state[prefix + "encoder.layer.1.mlp.up_gate_proj.weight"]
    save_file(state, str(path))
    pattern = rf"missing tensors: {prefix}encoder\.layer\.1\.mlp\.up_gate_proj\.weight".replace("new.", r"new\.")
    with pytest.raises(ModelLoadError, match=pattern):
        embedkit.load(model_dir)


def test_token_type_tensor_must_match_config(tmp_path: Path, minilm_dir: Path) -> None:
    """type_vocab_size 0 in config.json but a token-type table in the weights: named as unexpected."""
    model_dir = write_gte(tmp_path / "types", minilm_dir, type_vocab_size=1, seed=9)
    config = json.loads((model_dir / "config.json").read_text())
    config["type_vocab_size"] = 0
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"unexpected tensors: embeddings\.token_type_embeddings\.weight"):
        embedkit.load(model_dir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"position_embedding_type": "absolute"}, "position_embedding_type='absolute'"),
        ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "RoPE scaling type 'yarn'"),
        ({"layer_norm_type": "batch_norm"}, "layer_norm_type='batch_norm'"),
    ],
)
def test_unsupported_settings_are_named(tmp_path: Path, tiny_gte_dir: Path, change: dict, message: str) -> None:
    other = Path(shutil.copytree(tiny_gte_dir, tmp_path / "other"))
    config = json.loads((other / "config.json").read_text())
    config.update(change)
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        embedkit.load(other)
