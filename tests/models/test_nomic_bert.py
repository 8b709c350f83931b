"""NomicBERT family (nomic-embed-text-v1 / v1.5): the original remote-code layout against transformers' native port.

Tiny random checkpoints are written here as the hub publishes nomic-embed-text-v1.5: its config.json
(GPT-2 keys `n_embd`/`n_layer`/`n_head`/`n_inner`/`n_positions`, `activation_function` "swiglu",
`rotary_emb_base` 1000, `auto_map` to nomic-ai/nomic-bert-2048, the WordPiece vocabulary padded to a
multiple of 64), its tensor names (`emb_ln`, `encoder.layers.N.attn.Wqkv`, `mlp.fc11/fc12/fc2`,
`norm1/norm2`) and its sentence-transformers files (Transformer + mean Pooling, no Normalize). They are
compared with transformers' own `NomicBertModel`, loaded through `from_pretrained` from a native
config.json written beside the same weight files, so that the renames and the Wqkv split are
transformers' conversion mapping, not ours. sentence-transformers cannot be a reference here: it runs
this model only through the remote code (trust_remote_code), which embedkit never runs.
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
from embedkit.models.registry import detect_family

from ..conftest import write_st_files


def load(model_dir: Path, **kwargs: object) -> embedkit.LocalEmbedder:
    """The torch model itself (ONNX Runtime against it: tests/onnx/test_families.py)."""
    return embedkit.load(model_dir, device="cpu", backend="torch", **kwargs)


REMOTE = "nomic-ai/nomic-bert-2048--"
AUTO_MAP = {
    "AutoConfig": REMOTE + "configuration_hf_nomic_bert.NomicBertConfig",
    "AutoModel": REMOTE + "modeling_hf_nomic_bert.NomicBertModel",
    "AutoModelForMaskedLM": REMOTE + "modeling_hf_nomic_bert.NomicBertForPreTraining",
    "AutoModelForSequenceClassification": REMOTE + "modeling_hf_nomic_bert.NomicBertForSequenceClassification",
}

TEXTS = [
    "A short sentence.",
    "A somewhat longer sentence about rotary embeddings, with punctuation!",
    "Unicode: naïve café, 日本語のテキスト, emoji 🎉",
    "x",
    "Long inputs are cut at the limit: " + "each token attends to its neighbours and to far ones. " * 20,
]

MAX_SEQ_LENGTH = 96  # sentence_bert_config.json's limit (8192 published): the long text is cut here
HIDDEN = 32

# -- a checkpoint in the published layout ------------------------------------------------------------


def hub_config(**overrides: object) -> dict:
    """nomic-embed-text-v1.5's config.json with tiny sizes (every other key as published)."""
    config = {
        "activation_function": "swiglu",
        "architectures": ["NomicBertModel"],
        "attn_pdrop": 0.0,
        "auto_map": AUTO_MAP,
        "bos_token_id": None,
        "causal": False,
        "dense_seq_output": True,
        "embd_pdrop": 0.0,
        "eos_token_id": None,
        "fused_bias_fc": True,
        "fused_dropout_add_ln": True,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-12,
        "max_position_embeddings": 2048,  # transformers 5's name, added to the hub file beside n_positions 8192
        "max_trained_positions": 2048,
        "mlp_fc1_bias": False,
        "mlp_fc2_bias": False,
        "model_type": "nomic_bert",
        "n_embd": HIDDEN,
        "n_head": 2,  # head dim 16
        "n_inner": 48,
        "n_layer": 2,
        "n_positions": 8192,
        "pad_vocab_size_multiple": 64,
        "parallel_block": False,
        "parallel_block_tied_norm": False,
        "prenorm": False,
        "qkv_proj_bias": False,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.0,
        "rope_parameters": {"rope_theta": 1000.0, "rope_type": "default"},  # likewise, beside rotary_emb_base
        "rotary_emb_base": 1000,
        "rotary_emb_fraction": 1.0,
        "rotary_emb_interleaved": False,
        "rotary_emb_scale_base": None,
        "rotary_scaling_factor": None,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.0,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "torch_dtype": "float32",
        "transformers_version": "4.37.2",
        "type_vocab_size": 2,
        "use_cache": True,
        "use_flash_attn": True,
        "use_rms_norm": False,
        "use_xentropy": True,
        "vocab_size": 30522,  # the all-MiniLM WordPiece vocabulary; the table has 30528 rows (multiple of 64)
    }
    config.update(overrides)
    return config


def original_tensors(config: dict, *, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """Random weights under the remote code's `NomicBertModel` state-dict names."""
    g = torch.Generator().manual_seed(seed)
    H, inner = config["n_embd"], config["n_inner"]
    vocab = -(-config["vocab_size"] // config["pad_vocab_size_multiple"]) * config["pad_vocab_size_multiple"]

    def randn(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std + mean

    def linear(name: str, out: int, inp: int, bias: bool) -> dict[str, torch.Tensor]:
        tensors = {f"{name}.weight": randn(out, inp, std=0.15)}
        if bias:
            tensors[f"{name}.bias"] = randn(out, std=0.05)
        return tensors

    def norm(name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": randn(H, std=0.1, mean=1.0), f"{name}.bias": randn(H, std=0.1)}

    state = {
        "embeddings.word_embeddings.weight": randn(vocab, H, std=0.5),
        "embeddings.token_type_embeddings.weight": randn(config["type_vocab_size"], H, std=0.5),
        **norm("emb_ln"),
    }
    for n in range(config["n_layer"]):
        p = f"encoder.layers.{n}."
        state.update(linear(p + "attn.Wqkv", 3 * H, H, config["qkv_proj_bias"]))
        state.update(linear(p + "attn.out_proj", H, H, config["qkv_proj_bias"]))
        state.update(linear(p + "mlp.fc11", inner, H, config["mlp_fc1_bias"]))
        state.update(linear(p + "mlp.fc12", inner, H, config["mlp_fc1_bias"]))
        state.update(linear(p + "mlp.fc2", H, inner, config["mlp_fc2_bias"]))
        state.update(norm(p + "norm1"))
        state.update(norm(p + "norm2"))
    return {prefix + name: tensor for name, tensor in state.items()}


def write_nomic(
    target: Path,
    tokenizer_dir: Path,
    *,
    seed: int = 0,
    prefix: str = "",
    prompts: dict[str, str] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    **overrides: object,
) -> Path:
    """A tiny random nomic-embed-text-v1.5 as the hub publishes it: config.json, weights, ST files."""
    config = hub_config(**overrides)
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    state = original_tensors(config, seed=seed, prefix=prefix)
    state.update(extra_tensors or {})
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    return write_st_files(
        target, tokenizer_dir, hidden_size=HIDDEN, pooling="mean", max_seq_length=MAX_SEQ_LENGTH, prompts=prompts
    )


# -- transformers' native reference ------------------------------------------------------------------


def native_model(model_dir: Path, tmp_path: Path):  # -> transformers.NomicBertModel
    """transformers' NomicBertModel on the same weight files, converted by its own conversion mapping.

    The native config is built explicitly (never from the original config.json, whose auto_map asks
    for remote code): GPT-2 names to BERT names, `rotary_emb_base` to rope_parameters, swiglu to silu.
    """
    from transformers import NomicBertConfig, NomicBertModel

    original = json.loads((model_dir / "config.json").read_text())
    assert original["activation_function"] == "swiglu" and not original["qkv_proj_bias"]
    multiple = original["pad_vocab_size_multiple"]
    native = NomicBertConfig(
        vocab_size=-(-original["vocab_size"] // multiple) * multiple,
        hidden_size=original["n_embd"],
        num_hidden_layers=original["n_layer"],
        num_attention_heads=original["n_head"],
        intermediate_size=original["n_inner"],
        hidden_act="silu",
        max_position_embeddings=original["n_positions"],
        type_vocab_size=original["type_vocab_size"],
        layer_norm_eps=original["layer_norm_epsilon"],
        rope_parameters={"rope_type": "default", "rope_theta": float(original["rotary_emb_base"])},
    )
    ref_dir = tmp_path / "native-reference"
    ref_dir.mkdir(exist_ok=True)
    native.save_pretrained(ref_dir)
    shutil.copy(model_dir / "model.safetensors", ref_dir / "model.safetensors")
    model, info = NomicBertModel.from_pretrained(ref_dir, attn_implementation="eager", output_loading_info=True)
    assert not any(info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def native_mean(model, tokenizer_dir: Path, texts: list[str]) -> np.ndarray:
    """Mean-pooled last_hidden_state over real tokens (sentence-transformers' Pooling, mean mode)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch should be padded"
    assert int(batch["attention_mask"].sum(1).max()) == MAX_SEQ_LENGTH, "the long text should be cut"
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()


@pytest.fixture(scope="module")
def tiny_nomic_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return write_nomic(tmp_path_factory.mktemp("tiny-nomic"), minilm_dir, seed=1)


@pytest.fixture(scope="module")
def reference(tiny_nomic_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # -> NomicBertModel
    return native_model(tiny_nomic_dir, tmp_path_factory.mktemp("native"))


def test_published_layout(tiny_nomic_dir: Path) -> None:
    """The writer is what the module docstring claims: original names, padded vocabulary, no biases."""
    names = set(load_file(str(tiny_nomic_dir / "model.safetensors")))
    assert {"emb_ln.weight", "encoder.layers.0.attn.Wqkv.weight", "encoder.layers.1.mlp.fc12.weight"} <= names
    assert not any(name.endswith(".bias") and ".norm" not in name and "emb_ln" not in name for name in names)
    table = load_file(str(tiny_nomic_dir / "model.safetensors"))["embeddings.word_embeddings.weight"]
    assert table.shape == (30528, HIDDEN)


def test_matches_transformers_native(tiny_nomic_dir: Path, minilm_dir: Path, reference) -> None:
    embedder = load(tiny_nomic_dir)
    assert embedder.family == "nomic_bert" and embedder.describe()["pooling"] == ["mean"]
    assert embedder.max_input_tokens == MAX_SEQ_LENGTH
    ours = embedder.embed(TEXTS, normalize=False)
    expected = native_mean(reference, minilm_dir, TEXTS)
    assert ours.shape == expected.shape == (len(TEXTS), HIDDEN)
    assert np.abs(ours - expected).max() < 1e-5


@pytest.mark.parametrize(("task", "prefix"), [("query", "search_query: "), ("document", "search_document: ")])
def test_tasks_are_the_model_cards_prefixes(
    tiny_nomic_dir: Path, minilm_dir: Path, reference, task: str, prefix: str
) -> None:
    """No prompts in config_sentence_transformers.json (as published): query/document get the card's prefixes."""
    embedder = load(tiny_nomic_dir)
    tasks = embedder.describe()["tasks"]
    assert tasks["query"] == "search_query: " and tasks["document"] == "search_document: "
    assert tasks["classification"] == "classification: " and tasks["clustering"] == "clustering: "
    ours = embedder.embed(TEXTS, task=task, normalize=False)
    expected = native_mean(reference, minilm_dir, [prefix + text for text in TEXTS])
    assert np.abs(ours - expected).max() < 1e-5
    assert np.abs(ours - embedder.embed(TEXTS, normalize=False)).max() > 1e-3  # the prefix is not ignored


def test_matryoshka_dimensions(tiny_nomic_dir: Path, minilm_dir: Path, reference) -> None:
    """`dimensions` cuts the mean-pooled vector, then L2-normalises (sentence-transformers' truncate_dim)."""
    embedder = load(tiny_nomic_dir)
    full = native_mean(reference, minilm_dir, ["search_query: " + text for text in TEXTS])
    for size in (32, 16, 8):  # 768 / 384 / 192 at this scale
        cut = full[:, :size] / np.linalg.norm(full[:, :size], axis=1, keepdims=True)
        ours = embedder.embed(TEXTS, task="query", dimensions=size)
        assert ours.shape == (len(TEXTS), size) and np.abs(ours - cut).max() < 1e-5


def test_prompts_from_sentence_transformers_files_win(tmp_path: Path, minilm_dir: Path) -> None:
    """A checkpoint whose config_sentence_transformers.json lists prompts gets those, not the card's."""
    prompts = {"search_query": "search_query: ", "search_document": "search_document: ", "other": "other: "}
    model_dir = write_nomic(tmp_path / "with-prompts", minilm_dir, seed=1, prompts=prompts)
    tasks = load(model_dir).describe()["tasks"]
    assert tasks["query"] == "search_query: " and tasks["other"] == "other: " and "clustering" not in tasks


def test_batched_equals_single(tiny_nomic_dir: Path) -> None:
    embedder = load(tiny_nomic_dir)
    batched = embedder.embed(TEXTS, task="document")
    single = np.stack([embedder.embed([text], task="document")[0] for text in TEXTS])
    assert np.abs(batched - single).max() < 1e-5
    embedder.batch_tokens = 120  # several token-budget batches, order must be restored
    assert np.abs(embedder.embed(TEXTS, task="document") - batched).max() < 1e-5


def test_pretraining_checkpoint_loads_the_same(tmp_path: Path, minilm_dir: Path, tiny_nomic_dir: Path) -> None:
    """Saved from NomicBertForPreTraining: `bert.` prefix and a `cls.` MLM head, which an embedder ignores."""
    head = {"cls.predictions.transform.dense.weight": torch.zeros(HIDDEN, HIDDEN)}
    prefixed = write_nomic(tmp_path / "pretraining", minilm_dir, seed=1, prefix="bert.", extra_tensors=head)
    a = load(prefixed).embed(TEXTS)
    np.testing.assert_array_equal(a, load(tiny_nomic_dir).embed(TEXTS))


def test_transformers_5_config_names_agree(tmp_path: Path, tiny_nomic_dir: Path) -> None:
    """Newer copies of the published config.json also carry hidden_size, layer_norm_eps and rope_parameters."""
    other = Path(shutil.copytree(tiny_nomic_dir, tmp_path / "both-names"))
    config = json.loads((other / "config.json").read_text())
    for gpt2 in ("n_embd", "n_layer", "n_head", "n_inner", "rotary_emb_base"):
        del config[gpt2]
    config.update(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
    config.update(hidden_act="silu", rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    config.update(layer_norm_eps=1e-12)
    (other / "config.json").write_text(json.dumps(config))
    expected = load(tiny_nomic_dir).embed(TEXTS)
    np.testing.assert_array_equal(load(other).embed(TEXTS), expected)
    config["hidden_size"], config["n_embd"] = HIDDEN, 64
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="n_embd=64 and hidden_size=32 disagree"):
        load(other)


def test_biases_load_and_count(tmp_path: Path, minilm_dir: Path) -> None:
    """qkv_proj_bias / mlp_fc1_bias / mlp_fc2_bias true (the remote config class's defaults) load their
    tensors and change the vectors; a bias the config does not announce is named."""
    flags = {"qkv_proj_bias": True, "mlp_fc1_bias": True, "mlp_fc2_bias": True}
    model_dir = write_nomic(tmp_path / "biases", minilm_dir, seed=2, **flags)
    embedder = load(model_dir)
    batched = embedder.embed(TEXTS)
    single = np.stack([embedder.embed([text])[0] for text in TEXTS])
    assert np.abs(batched - single).max() < 1e-5
    config = json.loads((model_dir / "config.json").read_text())
    config["mlp_fc2_bias"] = False
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"unexpected tensors: encoder\.layers\.0\.mlp\.fc2\.bias"):
        load(model_dir)


# -- detection -----------------------------------------------------------------------------------------


def test_models_inspect_names_the_family_and_why(tiny_nomic_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from embedkit.cli import main

    assert main(["models", "inspect", str(tiny_nomic_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "nomic_bert" and info["dimension"] == HIDDEN
    assert info["detected_by"] == [
        "config.json: model_type is 'nomic_bert'",
        "tensors: encoder.layers.0.mlp.fc11.weight",
    ]


NOMIC_TENSORS = {"emb_ln.weight", "encoder.layers.0.attn.Wqkv.weight", "encoder.layers.0.mlp.fc11.weight"}


@pytest.mark.parametrize(
    "config",
    [
        {"architectures": ["NomicBertModel"]},
        {"auto_map": {"AutoModel": REMOTE + "modeling_hf_nomic_bert.NomicBertModel"}},
        {},  # no known architecture fields: the tensors decide (with a warning)
    ],
)
def test_detected_by_config_or_tensors(config: dict) -> None:
    assert detect_family(config, NOMIC_TENSORS, "ckpt").family.name == "nomic_bert"


@pytest.mark.parametrize(
    "names",
    [
        # jina-embeddings-v3: the same flash-attn lineage, `mixer.Wqkv` and an ungated fc1
        {"emb_ln.weight", "encoder.layers.0.mixer.Wqkv.bias", "encoder.layers.0.mlp.fc1.weight"},
        # ModernBERT: `model.layers.N.attn.Wqkv` with `mlp.Wi`
        {"model.embeddings.tok_embeddings.weight", "model.layers.0.attn.Wqkv.weight", "model.layers.0.mlp.Wi.weight"},
    ],
)
def test_lookalike_tensors_are_not_nomic(names: set[str]) -> None:
    try:
        detection = detect_family({}, names, "ckpt")
    except ModelLoadError:
        return
    assert detection.family.name != "nomic_bert"


def test_config_and_tensors_must_agree() -> None:
    jina_v3 = {"emb_ln.weight", "encoder.layers.0.mixer.Wqkv.bias"}
    with pytest.raises(ModelLoadError, match=r"config\.json says nomic_bert"):
        detect_family(hub_config(), jina_v3, "ckpt")


# -- what is refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rotary_scaling_factor": 2.0}, "rotary_scaling_factor=2.0 .*dynamic NTK"),
        ({"activation_function": "gelu"}, "activation_function='gelu' is not supported"),
        ({"moe_every_n_layers": 2, "num_experts": 8}, "mixture-of-experts NomicBERT"),
        ({"prenorm": True}, "prenorm=true"),
        ({"rotary_emb_fraction": 0.5}, "rotary_emb_fraction=0.5"),
        ({"rotary_emb_interleaved": True}, "rotary_emb_interleaved=true"),
        ({"rotary_emb_base": None, "rope_parameters": None}, "sets no rotary_emb_base"),
        ({"rotary_emb_base": 10000}, "RoPE bases disagree"),
    ],
)
def test_unsupported_settings_are_named(tmp_path: Path, tiny_nomic_dir: Path, change: dict, message: str) -> None:
    other = Path(shutil.copytree(tiny_nomic_dir, tmp_path / "other"))
    config = json.loads((other / "config.json").read_text())
    config.update(change)
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        load(other)


def test_missing_tensor_is_named(tmp_path: Path, tiny_nomic_dir: Path) -> None:
    broken = Path(shutil.copytree(tiny_nomic_dir, tmp_path / "broken"))
    state = load_file(str(broken / "model.safetensors"))
    del state["encoder.layers.1.mlp.fc12.weight"]
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"missing tensors: encoder\.layers\.1\.mlp\.fc12\.weight"):
        load(broken)
