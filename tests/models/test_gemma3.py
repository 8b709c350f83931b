"""EmbeddingGemma (bidirectional Gemma3 text encoder + Dense projections): native and sentence-transformers parity.

A tiny random checkpoint is written here as google/embeddinggemma-300m publishes it: config.json with
model_type "gemma3_text", architectures ["Gemma3TextModel"], use_bidirectional_attention true,
rope_theta / rope_local_base_freq and an explicit layer_types list; model.safetensors with the
unprefixed names Gemma3TextModel saves (`embed_tokens.weight`, `layers.N.self_attn.q_norm.weight`, ...);
modules.json Transformer -> Pooling(mean) -> Dense -> Dense -> Normalize, the Dense folders written by
sentence-transformers' own Dense module; config_sentence_transformers.json with the published prompts.

The tokenizer is NOT Gemma's (its SentencePiece model is not available offline): a small BPE built with
the tokenizers library carrying Gemma's special tokens at Gemma's ids (<pad> 0, <eos> 1, <bos> 2,
<unk> 3) and its template, <bos> text <eos> (the published tokenizer adds both).

References: transformers' Gemma3TextModel loaded by from_pretrained from the same folder (so the layout
is checked too) with mean pooling and the two Dense matrices applied by hand, and SentenceTransformer
on the folder itself (it runs without remote code).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

import embedkit
from embedkit.errors import ModelLoadError
from embedkit.models import gemma3
from embedkit.models.pooling import pool
from embedkit.models.registry import detect_family
from embedkit.tasks import known_prompts

from .modules import load_module

# the published set (google/embeddinggemma-300m config_sentence_transformers.json), default_prompt_name null
PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "BitextMining": "task: search result | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "InstructionRetrieval": "task: code retrieval | query: ",
    "MultilabelClassification": "task: classification | query: ",
    "PairClassification": "task: sentence similarity | query: ",
    "Reranking": "task: search result | query: ",
    "Retrieval": "task: search result | query: ",
    "Retrieval-query": "task: search result | query: ",
    "Retrieval-document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Summarization": "task: summarization | query: ",
}
TEXTS = [
    "how do vector databases index embeddings?",
    "x",
    "Die Katze schläft auf dem Sofa, und der Hund bellt draußen im Garten.",
    "A long passage about retrieval, chunking and the way batches are padded. " * 3,
    "def search(q):\n    return index.query(q, k=10)",
    "A very long passage that goes past the limit of the tiny model, so it is truncated. " * 8,
]
CORPUS = [*TEXTS, *PROMPTS.values(), "hello world", "Qdrant stores points with payloads."]
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # Gemma's ids 0, 1, 2, 3
MAX_SEQ_LENGTH = 48
HIDDEN, DENSE_WIDTH = 48, 192

CONFIG = {
    "architectures": ["Gemma3TextModel"],
    "model_type": "gemma3_text",
    "use_bidirectional_attention": True,
    "vocab_size": 320,
    "hidden_size": HIDDEN,
    "intermediate_size": 96,
    "num_hidden_layers": 6,
    "num_attention_heads": 3,
    "num_key_value_heads": 1,  # GQA, as the 300m model's 3 query heads on 1 kv head
    "head_dim": 32,  # explicit and != 48 / 3
    "query_pre_attn_scalar": 24,  # != head_dim, so the scaling is checked (the 300m has 256 = head_dim)
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
    "sliding_window": 8,  # a sliding layer sees 4 tokens each side; the test texts are longer
    "_sliding_window_pattern": 3,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"] * 2,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "dtype": "float32",
    "transformers_version": "4.57.0.dev0",
}


def gemma_like_tokenizer() -> Tokenizer:
    """A small BPE with Gemma's special tokens at Gemma's ids and its <bos> ... <eos> template."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False)
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    assert [tokenizer.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B:1 <eos>:1", special_tokens=[("<bos>", 2), ("<eos>", 1)]
    )
    return tokenizer


def random_state(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Gemma3TextModel's own state dict (so the names are what it saves), every tensor random; norms
    near 0 as Gemma's (1 + weight) expects, but not zero, so they matter."""
    from transformers import Gemma3TextConfig, Gemma3TextModel

    native = Gemma3TextModel(Gemma3TextConfig(**{k: v for k, v in config.items() if k != "architectures"}))
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in native.state_dict().items():
        std = 0.5 if name == "embed_tokens.weight" else 0.1 if "norm" in name else 0.15
        state[name] = torch.randn(tensor.shape, generator=g) * std
    return state


def write_gemma3(target: Path, _tokenizer_dir: Path | None = None, *, seed: int = 0, **changes: object) -> Path:
    """The tiny EmbeddingGemma folder, as the hub repository lays it out."""
    from sentence_transformers.sentence_transformer.modules import Dense

    config = {**CONFIG, **changes}
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    save_file(random_state(config, seed), str(target / "model.safetensors"), metadata={"format": "pt"})
    gemma_like_tokenizer().save(str(target / "tokenizer.json"))
    (target / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "padding_side": "right",
                "model_max_length": 2048,
            }
        )
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 4, "name": "4", "path": "4_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (target / "modules.json").write_text(json.dumps(modules, indent=2))
    (target / "1_Pooling").mkdir(exist_ok=True)
    (target / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": config["hidden_size"],
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_weightedmean_tokens": False,
                "pooling_mode_lasttoken": False,
                "include_prompt": True,
            }
        )
    )
    g = torch.Generator().manual_seed(seed + 100)
    for folder, (n_in, n_out) in (("2_Dense", (HIDDEN, DENSE_WIDTH)), ("3_Dense", (DENSE_WIDTH, HIDDEN))):
        weight = torch.randn(n_out, n_in, generator=g) / n_in**0.5
        (target / folder).mkdir(exist_ok=True)
        Dense(n_in, n_out, bias=False, activation_function=torch.nn.Identity(), init_weight=weight).save(
            str(target / folder)
        )
    (target / "4_Normalize").mkdir(exist_ok=True)
    (target / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    )
    (target / "config_sentence_transformers.json").write_text(
        json.dumps({"model_type": "SentenceTransformer", "prompts": PROMPTS, "default_prompt_name": None})
    )
    return target


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gemma3(tmp_path_factory.mktemp("embeddinggemma"), seed=1)


# -- references ------------------------------------------------------------------------------------------


def native_model(model_dir: Path) -> torch.nn.Module:
    """transformers' Gemma3TextModel from the folder itself: the published layout loads with nothing missing."""
    from transformers import Gemma3TextModel

    model, info = Gemma3TextModel.from_pretrained(model_dir, attn_implementation="eager", output_loading_info=True)
    assert not any(info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert model.config.use_bidirectional_attention
    return model.eval()


def dense_matrices(model_dir: Path) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    return [load_file(str(model_dir / f / "model.safetensors"))["linear.weight"] for f in ("2_Dense", "3_Dense")]


def token_rows(model_dir: Path, texts: list[str]) -> list[list[int]]:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # cut as the tokenizer truncates: <bos>, the text's first tokens, <eos>
    rows = [e.ids for e in tokenizer.encode_batch(texts)]
    return [[*row[: MAX_SEQ_LENGTH - 1], 1] if len(row) > MAX_SEQ_LENGTH else row for row in rows]


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), True
    return ids, mask


def native_vectors(model_dir: Path, texts: list[str], native: torch.nn.Module | None = None) -> np.ndarray:
    """Gemma3TextModel -> mean over real tokens -> Dense -> Dense, by hand; unnormalised."""
    native = native or native_model(model_dir)
    ids, mask = padded(token_rows(model_dir, texts))
    with torch.no_grad():
        hidden = native(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    pooled = pool(hidden, mask, ["mean"])
    for weight in dense_matrices(model_dir):
        pooled = pooled @ weight.T
    return pooled.numpy()


def normalized(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- parity ----------------------------------------------------------------------------------------------


def test_matches_native_gemma3_with_dense(gemma_dir: Path) -> None:
    embedder = embedkit.load(gemma_dir, device="cpu", backend="torch")
    assert embedder.family == "gemma3" and embedder.dimension == HIDDEN
    lengths = [len(row) for row in token_rows(gemma_dir, TEXTS)]
    assert min(lengths) < 8 < max(lengths) == MAX_SEQ_LENGTH  # shorter and longer than the window, one cut
    ours = embedder.embed(TEXTS, normalize=False)
    native = native_model(gemma_dir)
    expected = native_vectors(gemma_dir, TEXTS, native)
    assert ours.shape == expected.shape == (len(TEXTS), HIDDEN)
    assert np.abs(ours - expected).max() < 1e-5

    # the window matters: the same module with an unbounded window gives other vectors
    module = embedder.model
    assert isinstance(module, gemma3.Gemma3) and module.radius == 4
    module.radius = 10**6
    try:
        assert np.abs(embedder.embed(TEXTS, normalize=False) - ours).max() > 1e-3
    finally:
        module.radius = 4
    single = np.stack([embedder.embed([text], normalize=False)[0] for text in TEXTS])
    assert np.abs(ours - single).max() < 1e-5


@pytest.mark.parametrize("window", [7, 10])
def test_window_boundary_matches_native(tmp_path: Path, window: int) -> None:
    """Odd and even sliding_window: transformers' W // 2 + 1 exclusive bound, i.e. W // 2 each side."""
    model_dir = write_gemma3(tmp_path / f"w{window}", seed=window, sliding_window=window)
    ours = embedkit.load(model_dir, device="cpu", backend="torch").embed(TEXTS, normalize=False)
    assert np.abs(ours - native_vectors(model_dir, TEXTS)).max() < 1e-5
    assert gemma3.sliding_radius(window) == window // 2 and gemma3.sliding_radius(512) == 256


def test_matches_sentence_transformers_with_prompts_and_matryoshka(gemma_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gemma_dir), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]
    embedder = embedkit.load(gemma_dir, device="cpu", backend="torch")
    for task in (None, "query", "document", "STS", "Retrieval-document"):
        expected = st.encode(TEXTS, prompt_name=task, convert_to_numpy=True, batch_size=4)
        ours = embedder.embed(TEXTS, task=task)
        assert np.abs(ours - expected).max() < 1e-5, task
    for size in (32, 16):  # Matryoshka: embedkit cuts then normalises; ST normalises then cuts
        expected = st.encode(TEXTS, prompt_name="query", truncate_dim=size, convert_to_numpy=True)
        ours = embedder.embed(TEXTS, task="query", dimensions=size)
        assert np.abs(ours - normalized(expected)).max() < 1e-5, size
    assert embedder.describe()["tasks"]["query"] == PROMPTS["query"]


def test_prompts_are_in_known_prompts() -> None:
    known = known_prompts("google/embeddinggemma-300m")
    assert known is not None
    assert known.prompts["query"] == PROMPTS["query"] and known.prompts["document"] == PROMPTS["document"]
    assert "embeddinggemma-300m config_sentence_transformers.json" in known.source
    assert dict(known.prompts) == PROMPTS  # the same set the tiny checkpoint carries


def test_bfloat16_agrees_with_float32(gemma_dir: Path) -> None:
    full = embedkit.load(gemma_dir, device="cpu").embed(TEXTS)
    half = embedkit.load(gemma_dir, device="cpu", dtype="bfloat16").embed(TEXTS)
    assert np.isfinite(half).all() and (full * half).sum(axis=1).min() >= 0.99


# -- detection and errors ------------------------------------------------------------------------------


def test_detection_reasons_and_sign_order(gemma_dir: Path) -> None:
    from embedkit.weights import tensor_shapes

    names = set(tensor_shapes(gemma_dir))
    assert "layers.0.self_attn.q_proj.weight" in names  # qwen's sign is present too
    detection = detect_family(CONFIG, names, str(gemma_dir))
    assert detection.family.name == "gemma3"
    assert detection.reasons[1] == "tensors: layers.0.pre_feedforward_layernorm.weight"
    # tensors alone (a config naming nothing) still say gemma3, not qwen
    assert detect_family({}, names, str(gemma_dir)).family.name == "gemma3"
    with pytest.raises(ModelLoadError, match=r"config\.json says qwen"):
        detect_family({"model_type": "qwen3"}, names, str(gemma_dir))


def edit_config(model_dir: Path, target: Path, **changes: object) -> Path:
    other = Path(shutil.copytree(model_dir, target))
    config = json.loads((other / "config.json").read_text())
    config.update(changes)
    (other / "config.json").write_text(json.dumps(config))
    return other


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_bidirectional_attention": False}, "use_bidirectional_attention is not true"),
        ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE type 'yarn'"),
        ({"layer_types": ["sliding_attention"] * 5}, "layer_types has 5 entries for 6 layers"),
        ({"num_key_value_heads": 2}, "not divisible by num_key_value_heads 2"),
    ],
)
def test_refused_configs(tmp_path: Path, gemma_dir: Path, change: dict, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        embedkit.load(edit_config(gemma_dir, tmp_path / "other", **change), device="cpu")


def test_dense_errors_name_the_file(tmp_path: Path, gemma_dir: Path) -> None:
    broken = Path(shutil.copytree(gemma_dir, tmp_path / "dense"))
    config_path = broken / "3_Dense" / "config.json"
    config = json.loads(config_path.read_text())
    json_text = json.dumps({**config, "in_features": 100})
    config_path.write_text(json_text)
    with pytest.raises(ModelLoadError, match=r"3_Dense/config.json: in_features 100, but the vector before it has 192"):
        embedkit.load(broken, device="cpu")
    config_path.write_text(json.dumps({**config, "activation_function": "my.module.Swish"}))
    with pytest.raises(ModelLoadError, match=r"activation_function 'my\.module\.Swish' is not implemented"):
        embedkit.load(broken, device="cpu")


def test_module_layout_and_rope_parameters_form(tmp_path: Path, gemma_dir: Path) -> None:
    """transformers 5's saved form (rope_parameters per layer type) reads the same thetas."""
    module = load_module(gemma_dir)
    assert isinstance(module, gemma3.Gemma3)
    assert module.ropes["full_attention"].theta == 1e6 and module.ropes["sliding_attention"].theta == 1e4
    other = edit_config(
        gemma_dir,
        tmp_path / "v5",
        rope_theta=None,
        rope_local_base_freq=None,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 5e5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 2e4},
        },
    )
    config = json.loads((other / "config.json").read_text())
    config = {k: v for k, v in config.items() if v is not None}
    with torch.device("meta"):
        built, _ = gemma3.build(config, set(), str(other))
    assert built.ropes["full_attention"].theta == 5e5 and built.ropes["sliding_attention"].theta == 2e4


def test_models_inspect_names_gemma3_and_why(gemma_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from embedkit.cli import main

    assert main(["models", "inspect", str(gemma_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "gemma3" and info["dimension"] == HIDDEN and info["pooling"] == ["mean"]
    assert info["detected_by"] == [
        "config.json: model_type/architectures name a Gemma3 text model (gemma3_text / Gemma3TextModel)",
        "tensors: layers.0.pre_feedforward_layernorm.weight",
    ]
    assert info["tasks"]["STS"] == PROMPTS["STS"] and info["max_input_tokens"] == MAX_SEQ_LENGTH


@pytest.mark.slow
def test_onnx_fp32_equals_torch_unnormalised(tmp_path: Path, gemma_dir: Path) -> None:
    """The exported graph (both window kinds, the Dense modules after it) gives torch's raw vectors."""
    pytest.importorskip("onnxruntime")
    want = embedkit.load(gemma_dir, device="cpu", backend="torch").embed(TEXTS, task="query", normalize=False)
    onnx = embedkit.load(gemma_dir, device="cpu", backend="onnx", onnx_cache_dir=tmp_path / "cache")
    assert onnx.backend == "onnx"
    assert np.abs(onnx.embed(TEXTS, task="query", normalize=False) - want).max() < 1e-5


def test_prepare_tokenizer_adds_bos_and_eos_once() -> None:
    """A tokenizer.json adding <bos> only (Gemma's default template) gets <eos> too; a complete one is kept."""
    complete = gemma_like_tokenizer()
    before = complete.to_str()
    assert gemma3.prepare_tokenizer(complete, CONFIG).to_str() == before
    text_ids = complete.encode("hello world", add_special_tokens=False).ids
    bos_only = gemma_like_tokenizer()
    bos_only.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    assert bos_only.encode("hello world").ids == [2, *text_ids]
    prepared = gemma3.prepare_tokenizer(bos_only, CONFIG)
    assert prepared.encode("hello world").ids == [2, *text_ids, 1]
    assert gemma3.prepare_tokenizer(prepared, CONFIG).encode("hello world").ids == [2, *text_ids, 1]


@torch.inference_mode()
def test_left_and_right_padding_agree_and_padding_stays_finite(gemma_dir: Path) -> None:
    """A short row beside a long one: its padding queries lie beyond the window of every real token."""
    from embedkit.models.base import positions_from_mask

    module = load_module(gemma_dir)
    rows = [[2, *range(5, 35), 1], [2, 9, 1]]
    ids, mask = padded(rows)
    right = module.forward_padded(ids, mask, positions_from_mask(mask))
    left_ids, left_mask = torch.zeros_like(ids), mask.flip(1)  # the same rows, padded on the left
    for i, row in enumerate(rows):
        left_ids[i, ids.shape[1] - len(row) :] = torch.tensor(row)
    left = module.forward_padded(left_ids, left_mask, positions_from_mask(left_mask))
    assert torch.isfinite(right).all() and torch.isfinite(left).all()
    for i in range(len(rows)):
        assert (right[i][mask[i]] - left[i][left_mask[i]]).abs().max() < 1e-5, i
