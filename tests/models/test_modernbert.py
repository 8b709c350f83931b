"""ModernBERT family: tiny random checkpoints in the published layout against transformers' native
`ModernBertModel` (SDPA and eager attention) and sentence-transformers.

The checkpoints have 4 layers (global, local, local, global with global_attn_every_n_layers 3) and a local
window far shorter than the test texts (local_attention 8: +-4 tokens), so both attention kinds and the
window itself decide the vectors. Weights are written as the published checkpoints hold them: under
`model.` beside ModernBertForMaskedLM's head (`head.*`, `decoder.*`), config.json in the released form
(`global_rope_theta`, `local_rope_theta`, `global_attn_every_n_layers`) and the tokenizer declaring
model_input_names [input_ids, attention_mask] (ModernBERT reads no token types). The vocabulary is
all-MiniLM-L6-v2's ([CLS] ... [SEP], as ModernBERT's own tokenizer frames a text).
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
from embedkit.tasks import known_prompts

from ..conftest import write_st_files

TEXTS = [
    "A short sentence.",
    "A somewhat longer sentence about transformers and embeddings, with punctuation!",
    "x",
    "Sliding windows: each token of a local layer sees only its neighbours, four on either side of it here.",
    "def f(x):\n    return x * 2  # code",
    "Unicode: naïve café, 日本語のテキスト",
    "A much longer text that will be cut at the limit of the tiny model's sixty-four tokens. " * 4,
]
MAX_SEQ_LENGTH = 64

CONFIG = {
    "architectures": ["ModernBertModel"],
    "model_type": "modernbert",
    "vocab_size": 30522,  # the all-MiniLM tokenizer's
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,  # head dim 16
    "intermediate_size": 48,
    "hidden_activation": "gelu",
    "max_position_embeddings": 8192,
    "global_attn_every_n_layers": 3,
    "local_attention": 8,
    "global_rope_theta": 160000.0,
    "local_rope_theta": 10000.0,
    "norm_eps": 1e-05,
    "norm_bias": False,
    "attention_bias": False,
    "mlp_bias": False,
    "attention_dropout": 0.0,
    "embedding_dropout": 0.0,
    "mlp_dropout": 0.0,
    "classifier_pooling": "mean",
    "classifier_activation": "gelu",
    "classifier_bias": False,
    "initializer_range": 0.02,
    "pad_token_id": 0,  # the borrowed vocabulary's [PAD], [CLS], [SEP]
    "cls_token_id": 101,
    "sep_token_id": 102,
    "bos_token_id": 101,
    "eos_token_id": 102,
    "torch_dtype": "float32",
    "transformers_version": "4.48.0",
}


def random_state(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random weights under ModernBertModel's state-dict names (no prefix), norms and biases away from 1 / 0."""
    from transformers import ModernBertConfig, ModernBertModel

    native = ModernBertConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(seed)
    model = ModernBertModel(native)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        if "norm" in name:
            state[name] = 1.0 + 0.1 * torch.randn(tensor.shape, generator=g)
        elif name.endswith(".bias"):
            state[name] = 0.05 * torch.randn(tensor.shape, generator=g)
        else:
            std = 0.5 if "tok_embeddings" in name else 0.15
            state[name] = std * torch.randn(tensor.shape, generator=g)
    return state


def write_modernbert(
    target: Path,
    tokenizer_dir: Path,
    *,
    seed: int = 0,
    prefix: str = "model.",
    pooling: str = "cls",
    prompts: dict[str, str] | None = None,
    mlm_head: bool = True,
    **overrides: object,
) -> Path:
    """A tiny random ModernBERT checkpoint as the Hub publishes one (module docstring), with its ST files."""
    config = {**CONFIG, **overrides}
    state = {prefix + name: tensor for name, tensor in random_state(config, seed).items()}
    H, g = config["hidden_size"], torch.Generator().manual_seed(seed + 1)
    if mlm_head and prefix:  # ModernBertForMaskedLM's own layers, which an embedder ignores
        state["head.dense.weight"] = torch.randn(H, H, generator=g)
        state["head.norm.weight"] = torch.ones(H)
        state["decoder.weight"] = state[prefix + "embeddings.tok_embeddings.weight"].clone()
        state["decoder.bias"] = torch.zeros(config["vocab_size"])
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    write_st_files(
        target, tokenizer_dir, hidden_size=H, pooling=pooling, max_seq_length=MAX_SEQ_LENGTH, prompts=prompts
    )
    declare_inputs(target)
    return target


def declare_inputs(target: Path) -> None:
    """ModernBERT's tokenizer_config.json names no token_type_ids (its model takes none)."""
    path = target / "tokenizer_config.json"
    tokenizer_config = json.loads(path.read_text())
    tokenizer_config["model_input_names"] = ["input_ids", "attention_mask"]
    path.write_text(json.dumps(tokenizer_config))


def native_states(model_dir: Path, texts: list[str], attn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' own ModernBertModel over the same folder: (last_hidden_state [B, T, H], mask [B, T])."""
    from transformers import AutoTokenizer, ModernBertModel

    model, info = ModernBertModel.from_pretrained(model_dir, attn_implementation=attn, output_loading_info=True)
    assert not any(info.get(key) for key in ("missing_keys", "mismatched_keys")), info
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch should be padded"
    assert batch["input_ids"].shape[1] > 2 * CONFIG["local_attention"], "rows longer than the local window"
    with torch.no_grad():
        hidden = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return hidden, batch["attention_mask"]


def pooled(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> np.ndarray:
    if pooling == "cls":
        return hidden[:, 0].numpy()
    weights = mask.unsqueeze(-1).float()
    return ((hidden * weights).sum(1) / weights.sum(1)).numpy()


# -- parity with transformers and sentence-transformers ------------------------------------------------

CASES = {
    # name: (write_modernbert settings, pooling); gte-modernbert-base pools CLS, modernbert-embed-base the mean
    "gte-modernbert (cls, model. prefix)": dict(seed=1, pooling="cls"),  # also against eager attention
    "modernbert-embed (mean, bare names)": dict(seed=2, pooling="mean", prefix="", mlm_head=False),
    "every 2nd global, window 16": dict(seed=3, pooling="mean", global_attn_every_n_layers=2, local_attention=16),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_transformers_and_sentence_transformers(tmp_path: Path, minilm_dir: Path, name: str) -> None:
    from sentence_transformers import SentenceTransformer

    settings = CASES[name]
    model_dir = write_modernbert(tmp_path / "model", minilm_dir, **settings)
    embedder = embedkit.load(model_dir, device="cpu", backend="torch")
    assert embedder.family == "modernbert" and embedder.max_input_tokens == MAX_SEQ_LENGTH
    assert embedder.describe()["pooling"] == [settings["pooling"]]
    ours = embedder.embed(TEXTS, normalize=False)
    for attn in ("sdpa", "eager") if name == next(iter(CASES)) else ("sdpa",):
        hidden, mask = native_states(model_dir, TEXTS, attn)
        expected = pooled(hidden, mask, settings["pooling"])
        assert ours.shape == expected.shape == (len(TEXTS), 32)
        assert np.abs(ours - expected).max() < 1e-5, attn
    reference = SentenceTransformer(str(model_dir), device="cpu", backend="torch")
    st = reference.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=False)
    assert np.abs(ours - st).max() < 1e-5
    # the long text was cut at the limit, by both
    assert embedder.count_tokens(TEXTS[-1:])[0] > MAX_SEQ_LENGTH


def test_the_window_and_both_thetas_decide_the_vectors(tmp_path: Path, minilm_dir: Path) -> None:
    """The parity above is not vacuous: a wider window, or either theta changed, moves the vectors, and
    transformers agrees where the local layers differ (they read the window and local_rope_theta)."""
    base_dir = write_modernbert(tmp_path / "base", minilm_dir, seed=4)
    base = embedkit.load(base_dir, device="cpu", backend="torch").embed(TEXTS)
    changes = {"local_attention": 128, "local_rope_theta": 500.0, "global_rope_theta": 500.0}
    for key, value in changes.items():
        model_dir = write_modernbert(tmp_path / key, minilm_dir, seed=4, **{key: value})
        other = embedkit.load(model_dir, device="cpu", backend="torch").embed(TEXTS, normalize=False)
        normalized = other / np.linalg.norm(other, axis=1, keepdims=True)
        assert np.abs(normalized - base).max() > 1e-3, key
        if key != "global_rope_theta":  # the global layers' parity is every case of the test above
            hidden, mask = native_states(model_dir, TEXTS, "sdpa")
            assert np.abs(other - pooled(hidden, mask, "cls")).max() < 1e-5, key


def test_prompts_match_sentence_transformers(tmp_path: Path, minilm_dir: Path) -> None:
    """modernbert-embed-base's prefixes in config_sentence_transformers.json, applied as sentence-transformers does."""
    from sentence_transformers import SentenceTransformer

    prompts = {"query": "search_query: ", "document": "search_document: "}
    model_dir = write_modernbert(tmp_path / "embed", minilm_dir, seed=5, pooling="mean", prompts=prompts)
    embedder = embedkit.load(model_dir, device="cpu", backend="torch")
    reference = SentenceTransformer(str(model_dir), device="cpu", backend="torch")
    for task in ("query", "document"):
        ours = embedder.embed(TEXTS, task=task, normalize=False)
        st = reference.encode(TEXTS, prompt_name=task, convert_to_numpy=True, normalize_embeddings=False)
        assert np.abs(ours - st).max() < 1e-5, task
    assert np.abs(embedder.embed(TEXTS[:2], task="query") - embedder.embed(TEXTS[:2])).max() > 1e-3


def test_known_prompts_for_the_remote_client() -> None:
    """TEI's /info lists no prompts: the client's table gives modernbert-embed's prefixes, none to gte-modernbert."""
    embed = known_prompts("nomic-ai/modernbert-embed-base")
    assert embed is not None and "model card" in embed.source
    assert embed.table().prefix("query") == "search_query: "
    assert embed.table().prefix("document") == "search_document: "
    gte = known_prompts("Alibaba-NLP/gte-modernbert-base")
    assert gte is not None and gte.table().prefix("query") == gte.table().prefix("document") == ""


def test_rope_parameters_form_loads_the_same(tmp_path: Path, minilm_dir: Path) -> None:
    """transformers 5 saves layer_types and rope_parameters per layer type; both forms give one model."""
    from transformers import ModernBertConfig

    published = write_modernbert(tmp_path / "published", minilm_dir, seed=6, local_rope_theta=20000.0)
    resaved = Path(shutil.copytree(published, tmp_path / "resaved"))
    ModernBertConfig.from_pretrained(published).save_pretrained(resaved)
    config = json.loads((resaved / "config.json").read_text())
    assert "rope_parameters" in config and "layer_types" in config and "local_rope_theta" not in config
    assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 20000.0
    a = embedkit.load(published, device="cpu", backend="torch").embed(TEXTS)
    b = embedkit.load(resaved, device="cpu", backend="torch").embed(TEXTS)
    np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)


# -- batching, detection, bad checkpoints ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_modernbert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return write_modernbert(tmp_path_factory.mktemp("tiny-modernbert"), minilm_dir, seed=7)


def test_batched_equals_single(tiny_modernbert_dir: Path) -> None:
    embedder = embedkit.load(tiny_modernbert_dir, device="cpu", backend="torch")
    batched = embedder.embed(TEXTS)
    single = np.stack([embedder.embed([text])[0] for text in TEXTS])
    assert np.abs(batched - single).max() < 1e-5
    embedder.batch_tokens = 70  # several token-budget batches, order restored
    assert np.abs(embedder.embed(TEXTS) - batched).max() < 1e-5


def test_detection_names_config_and_tensors(tiny_modernbert_dir: Path) -> None:
    config = json.loads((tiny_modernbert_dir / "config.json").read_text())
    names = set(load_file(str(tiny_modernbert_dir / "model.safetensors")))
    detection = detect_family(config, names, "m")
    assert detection.family.name == "modernbert"
    assert detection.reasons == (
        "config.json: model_type/architectures name ModernBERT",
        "tensors: layers.0.mlp.Wi.weight",
    )
    # the tensors alone say ModernBERT; NomicBERT's (encoder.layers.N.attn.Wqkv, mlp.fc11/fc12) never do
    assert detect_family({}, names, "m").family.name == "modernbert"
    nomic = {f"encoder.layers.0.{part}.weight" for part in ("attn.Wqkv", "mlp.fc11", "mlp.fc12", "mlp.fc2")}
    try:
        seen = detect_family({}, nomic | {"embeddings.word_embeddings.weight"}, "m").family.name
    except ModelLoadError:
        seen = None
    assert seen != "modernbert"
    # config and tensors must agree
    bert = {"encoder.layer.0.intermediate.dense.weight"}
    with pytest.raises(ModelLoadError, match=r"config\.json says modernbert .* the weights hold bert"):
        detect_family(config, bert, "m")


def test_models_inspect_names_modernbert(tiny_modernbert_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from embedkit.cli import main

    assert main(["models", "inspect", str(tiny_modernbert_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "modernbert" and info["dimension"] == 32 and info["pooling"] == ["cls"]
    assert "config.json: model_type/architectures name ModernBERT" in info["detected_by"]
    assert "tensors: layers.0.mlp.Wi.weight" in info["detected_by"]


def test_missing_tensor_is_named(tmp_path: Path, tiny_modernbert_dir: Path) -> None:
    broken = Path(shutil.copytree(tiny_modernbert_dir, tmp_path / "broken"))
    state = load_file(str(broken / "model.safetensors"))
    del state["model.layers.1.attn_norm.weight"]
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"missing tensors: model\.layers\.1\.attn_norm\.weight"):
        embedkit.load(broken)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "default RoPE only"),
        ({"classifier_pooling": "max"}, "classifier_pooling='max'"),
        ({"hidden_activation": "mish"}, "hidden_act='mish'"),
        ({"global_attn_every_n_layers": 0}, "global_attn_every_n_layers=0"),
        ({"norm_bias": True}, r"missing tensors: model\.embeddings\.norm\.bias"),
    ],
)
def test_unsupported_settings_are_named(tmp_path: Path, tiny_modernbert_dir: Path, change: dict, message: str) -> None:
    other = Path(shutil.copytree(tiny_modernbert_dir, tmp_path / "other"))
    config = json.loads((other / "config.json").read_text())
    config.update(change)
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        embedkit.load(other)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@torch.inference_mode()
def test_varlen_window_matches_stand_in(dtype: torch.dtype) -> None:
    """On CUDA a local layer runs the varlen kernel's window (|i - j| <= window); the stand-in is the reference."""
    from embedkit.local.batching import TokenBatch
    from embedkit.models.layers import PackedAttention
    from embedkit.models.modernbert import LocalAttention

    rows = [list(range(5, 5 + n)) for n in (5, 1, 40, 2, 17, 40)]
    batch = TokenBatch.from_ids(rows).to("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(batch.tokens, 4, 64, device="cuda", dtype=dtype, generator=g) for _ in range(3))
    packed = PackedAttention(batch.cu_seqlens, batch.max_length, tokens=batch.tokens)
    local = LocalAttention(packed, window=4)
    kernel = local(q, k, v)
    stand_in = packed.unpad(local.padded(packed.pad(q), packed.pad(k), packed.pad(v)))
    assert float((kernel.float() - stand_in.float()).abs().max()) < (5e-3 if dtype == torch.float16 else 3e-2)
    # the window is not the whole row: full attention differs
    assert float((packed(q, k, v).float() - stand_in.float()).abs().max()) > 0.1
