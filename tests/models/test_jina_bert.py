"""JinaBERT v2 family: golden vectors from upstream ports, and a naive reference on tiny random checkpoints.

The reference below (`naive_embedding`) is written from the published description of the model, not
from embedkit: it reads the raw safetensors dict by published tensor names, works in float64 on one
text at a time (no padding), loops over heads, and builds each head's ALiBi bias pair by pair from a
closed-form slope formula. embedkit runs fp32, batched and padded, through SDPA.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

import embedkit
from embedkit.errors import ModelLoadError
from embedkit.local.batching import TokenBatch
from embedkit.models.layers import alibi_slopes

from ..conftest import write_st_files
from .modules import load_module

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "jina-bert-v2"

TEXTS = [
    "A short sentence.",
    "Unicode: naïve café, 日本語のテキスト",
    "def f(x):\n    return x * 2  # code",
    "ALiBi lets a model read long inputs: " + "every token attends to its neighbours more than to far ones. " * 9,
    "x",
]

# -- the reference ---------------------------------------------------------------------------------


def reference_slope(head: int, n_heads: int) -> float:
    """Closed form of the ALiBi slope recipe: 2^(-8(h+1)/c) for the first c = 2^floor(log2 n) heads,
    then the odd-numbered (1-based: 1st, 3rd, ...) slopes of 2c, i.e. 2^(-8(2(h-c)+1)/(2c))."""
    c = 1 << (n_heads.bit_length() - 1)
    if head < c:
        return 2.0 ** (-8.0 * (head + 1) / c)
    return 2.0 ** (-8.0 * (2 * (head - c) + 1) / (2 * c))


def naive_embedding(state: dict[str, torch.Tensor], config: dict, ids: list[int]) -> torch.Tensor:
    """Mean-pooled JinaBERT v2 output for one unpadded text, float64, straight from the published names."""
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in state else ""
    code = prefix + "encoder.layer.0.mlp.up_gated_layer.weight" in state

    def w(name: str) -> torch.Tensor:
        return state[prefix + name].to(torch.float64)

    def linear(x: torch.Tensor, name: str, bias: bool = True) -> torch.Tensor:
        y = x @ w(name + ".weight").T
        return y + w(name + ".bias") if bias else y

    def layer_norm(x: torch.Tensor, name: str) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + config["layer_norm_eps"]) * w(name + ".weight") + w(name + ".bias")

    def act(x: torch.Tensor) -> torch.Tensor:
        if config["feed_forward_type"] == "reglu":
            return torch.where(x > 0, x, torch.zeros_like(x))
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))  # exact GELU

    H, n_heads, inter = config["hidden_size"], config["num_attention_heads"], config["intermediate_size"]
    d, T = H // n_heads, len(ids)
    word, types = w("embeddings.word_embeddings.weight"), w("embeddings.token_type_embeddings.weight")
    x = layer_norm(torch.stack([word[i] + types[0] for i in ids]), "embeddings.LayerNorm")  # [T, H]
    alibi = [
        torch.tensor(
            [[-reference_slope(h, n_heads) * abs(i - j) for j in range(T)] for i in range(T)], dtype=torch.float64
        )
        for h in range(n_heads)
    ]
    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        q, k, v = (linear(x, p + f"attention.self.{name}") for name in ("query", "key", "value"))
        if code:
            q, k = layer_norm(q, p + "attention.self.layer_norm_q"), layer_norm(k, p + "attention.self.layer_norm_k")
        heads = []
        for h in range(n_heads):
            cols = slice(h * d, (h + 1) * d)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(d) + alibi[h]  # [T, T]
            e = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
            heads.append((e / e.sum(dim=-1, keepdim=True)) @ v[:, cols])
        attn = layer_norm(
            linear(torch.cat(heads, dim=-1), p + "attention.output.dense") + x, p + "attention.output.LayerNorm"
        )
        if code:
            x = layer_norm(x + attn, p + "layer_norm_1")
            up = linear(x, p + "mlp.up_gated_layer", bias=False)
            mlp = linear(up[:, :inter] * act(up[:, inter:]), p + "mlp.down_layer")  # [linear | gated]
            x = layer_norm(x + mlp, p + "layer_norm_2")
        else:
            x = attn
            up = linear(x, p + "mlp.gated_layers", bias=False)
            mlp = linear(act(up[:, :inter]) * up[:, inter:], p + "mlp.wo")  # [gated | linear]
            x = layer_norm(x + mlp, p + "mlp.layernorm")
    return x.mean(dim=0)


# -- tiny random checkpoints in the published layouts ----------------------------------------------


def write_tiny_jina(
    target: Path,
    tokenizer_dir: Path,
    *,
    layout: str = "plain",
    prefix: str = "",
    heads: int = 6,
    hidden: int = 48,
    intermediate: int = 80,
    layers: int = 2,
    feed_forward_type: str = "geglu",
    seed: int = 0,
) -> Path:
    """A randomly initialised JinaBERT v2 checkpoint with published tensor names and config.json."""
    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return mean + std * torch.randn(*shape, generator=g)

    def linear(name: str, out: int, inp: int, bias: bool = True) -> dict[str, torch.Tensor]:
        tensors = {name + ".weight": randn(out, inp, std=0.1)}
        return {**tensors, name + ".bias": randn(out, std=0.05)} if bias else tensors

    def norm(name: str, size: int) -> dict[str, torch.Tensor]:
        return {name + ".weight": randn(size, std=0.1, mean=1.0), name + ".bias": randn(size, std=0.1)}

    state = {
        "embeddings.word_embeddings.weight": randn(vocab, hidden, std=0.5),
        "embeddings.token_type_embeddings.weight": randn(2, hidden, std=0.5),
        **norm("embeddings.LayerNorm", hidden),
        **linear("pooler.dense", hidden, hidden),
    }
    for n in range(layers):
        p = f"encoder.layer.{n}."
        for name in ("query", "key", "value"):
            state.update(linear(p + f"attention.self.{name}", hidden, hidden))
        state.update(linear(p + "attention.output.dense", hidden, hidden))
        state.update(norm(p + "attention.output.LayerNorm", hidden))
        if layout == "code":
            state.update(norm(p + "attention.self.layer_norm_q", hidden))
            state.update(norm(p + "attention.self.layer_norm_k", hidden))
            state.update(norm(p + "layer_norm_1", hidden))
            state.update(linear(p + "mlp.up_gated_layer", 2 * intermediate, hidden, bias=False))
            state.update(linear(p + "mlp.down_layer", hidden, intermediate))
            state.update(norm(p + "layer_norm_2", hidden))
        else:
            state.update(linear(p + "mlp.gated_layers", 2 * intermediate, hidden, bias=False))
            state.update(linear(p + "mlp.wo", hidden, intermediate))
            state.update(norm(p + "mlp.layernorm", hidden))
    state = {prefix + name: tensor for name, tensor in state.items()}
    if prefix:  # saved from the MaskedLM class: an MLM head and the position_ids buffer come along
        state[prefix + "embeddings.position_ids"] = torch.arange(8192).unsqueeze(0)
        state.update(linear("cls.predictions.transform.dense", hidden, hidden))
        state.update(norm("cls.predictions.transform.LayerNorm", hidden))
        state["cls.predictions.decoder.weight"] = state[prefix + "embeddings.word_embeddings.weight"].clone()
        state["cls.predictions.bias"] = torch.zeros(vocab)
    target.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})

    repo = "jinaai/jina-bert-v2-qk-post-norm" if layout == "code" else "jinaai/jina-bert-implementation"
    config = {
        "_name_or_path": repo,
        "architectures": ["JinaBertForMaskedLM"],
        "auto_map": {
            "AutoConfig": f"{repo}--configuration_bert.JinaBertConfig",
            "AutoModel": f"{repo}--modeling_bert.JinaBertModel",
            "AutoModelForMaskedLM": f"{repo}--modeling_bert.JinaBertForMaskedLM",
        },
        "attention_probs_dropout_prob": 0.0,
        "emb_pooler": "mean",
        "feed_forward_type": feed_forward_type,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 8192,
        "model_type": "bert",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 0,
        "position_embedding_type": "alibi",
        "type_vocab_size": 2,
        "vocab_size": vocab,
    }
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return write_st_files(target, tokenizer_dir, hidden_size=hidden, max_seq_length=512)


@pytest.fixture(scope="module")
def tiny_jina_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return write_tiny_jina(tmp_path_factory.mktemp("tiny-jina"), minilm_dir, seed=11)


@pytest.fixture(scope="module")
def tiny_jina_code_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return write_tiny_jina(tmp_path_factory.mktemp("tiny-jina-code"), minilm_dir, layout="code", seed=12)


def _edit_config(model_dir: Path, **changes: object) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (model_dir / "config.json").write_text(json.dumps(config))


def _rewrite_weights(model_dir: Path, change) -> None:
    path = model_dir / "model.safetensors"
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


# -- ALiBi slopes ----------------------------------------------------------------------------------

HAND_SLOPES = {
    1: [2**-8],
    3: [2**-4, 2**-8, 2**-2],
    4: [0.25, 0.0625, 0.015625, 0.00390625],
    6: [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125],
    8: [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625],
    12: [
        *[0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625],
        *[0.7071067811865476, 0.3535533905932738, 0.1767766952966369, 0.08838834764831845],
    ],
}


@pytest.mark.parametrize("n_heads", sorted(HAND_SLOPES))
def test_alibi_slopes_by_hand(n_heads: int) -> None:
    assert alibi_slopes(n_heads) == pytest.approx(HAND_SLOPES[n_heads], rel=1e-12)


def test_alibi_slopes_match_closed_form() -> None:
    for n_heads in range(1, 65):
        expected = [reference_slope(h, n_heads) for h in range(n_heads)]
        assert alibi_slopes(n_heads) == pytest.approx(expected, rel=1e-12), n_heads


# -- against the naive reference -------------------------------------------------------------------

REFERENCE_CASES = {
    "plain, 6 heads": dict(layout="plain", heads=6),
    "plain, bert. prefix + MLM head, reglu, 12 heads": dict(
        layout="plain", prefix="bert.", heads=12, feed_forward_type="reglu"
    ),
    "code layout, 6 heads": dict(layout="code", heads=6),
    "code layout, 3 heads": dict(layout="code", heads=3),
}


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_matches_naive_reference(tmp_path: Path, minilm_dir: Path, case: str) -> None:
    model_dir = write_tiny_jina(tmp_path / "m", minilm_dir, seed=sum(map(ord, case)), **REFERENCE_CASES[case])
    embedder = embedkit.load(model_dir, device="cpu")
    assert embedder.family == "jina_bert"
    ours = embedder.embed(TEXTS, normalize=False)  # one mixed-length, right-padded batch

    state = load_file(str(model_dir / "model.safetensors"))
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()  # the packaged MiniLM tokenizer.json pads to 128
    tokenizer.no_truncation()
    encodings = [tokenizer.encode(text) for text in TEXTS]
    lengths = [len(e.ids) for e in encodings]
    assert max(lengths) > 100 and min(lengths) <= 3 and max(lengths) <= embedder.max_input_tokens
    expected = np.stack([naive_embedding(state, config, e.ids).numpy() for e in encodings])

    assert ours.shape == expected.shape == (len(TEXTS), config["hidden_size"])
    assert np.abs(ours - expected).max() < 1e-5


def test_alibi_matters(tmp_path: Path, minilm_dir: Path) -> None:
    """The reference check above would not notice a missing ALiBi if it made no difference."""
    module = load_module(write_tiny_jina(tmp_path / "m", minilm_dir, seed=5))
    batch = TokenBatch.from_ids([[101, 2000, 2001, 2002, 2003, 102], [101, 2004, 102]])
    with torch.inference_mode():
        with_alibi = module(batch)
        module.alibi = None
        without = module(batch)
    assert (with_alibi - without).abs().max() > 1e-3


# -- golden vectors from the upstream ports --------------------------------------------------------


def _golden() -> dict | None:
    path = FIXTURES / "expected.json"
    return json.loads(path.read_text()) if path.is_file() else None


GOLDEN = _golden()
GOLDEN_CASES = [case["name"] for case in GOLDEN["cases"]] if GOLDEN else ["(fixtures absent)"]


@pytest.fixture(scope="module")
def golden_embedders() -> dict:
    return {}


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_golden_vectors(name: str, golden_embedders: dict) -> None:
    if GOLDEN is None:
        pytest.skip(f"JinaBERT golden fixtures not found at {FIXTURES}")
    case = next(case for case in GOLDEN["cases"] if case["name"] == name)
    model_dir = case["model_dir"]
    if model_dir not in golden_embedders:
        golden_embedders[model_dir] = embedkit.load(FIXTURES / model_dir, device="cpu")
    embedder = golden_embedders[model_dir]
    assert embedder.family == "jina_bert"
    assert [n + 2 for n in embedder.count_tokens(case["inputs"])] == [len(ids) for ids in case["input_ids"]]
    ours = embedder.embed(case["inputs"], normalize=case["normalized"])
    expected = np.asarray(case["embeddings"], dtype=np.float32)
    assert ours.shape == expected.shape == (len(case["inputs"]), case["dim"])
    assert np.abs(ours - expected).max() < 1e-5


# -- padding, naming, loading ----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["plain", "code"])
def test_batched_equals_single(which: str, tiny_jina_dir: Path, tiny_jina_code_dir: Path) -> None:
    embedder = embedkit.load(tiny_jina_dir if which == "plain" else tiny_jina_code_dir, device="cpu")
    short, long_a, long_b = "vector", "Padding must not leak into attention. " * 30, "A much longer text. " * 20
    alone = embedder.embed([short], normalize=False)[0]
    batched = embedder.embed([long_a, short, long_b], normalize=False)
    assert embedder.count_tokens([long_a])[0] > 100 * embedder.count_tokens([short])[0]
    assert np.abs(batched[1] - alone).max() < 1e-5
    singles = np.stack([embedder.embed([text], normalize=False)[0] for text in TEXTS])
    assert np.abs(embedder.embed(TEXTS, normalize=False) - singles).max() < 1e-5


def test_max_positions_comes_from_config(tiny_jina_dir: Path) -> None:
    assert load_module(tiny_jina_dir).max_positions == 8192
    assert embedkit.load(tiny_jina_dir, device="cpu").max_input_tokens == 512  # sentence_bert_config.json


@pytest.mark.parametrize("which", ["plain", "code"])
@pytest.mark.parametrize("name_or_path", ["", "/some/local/path", "someone/my-finetune"])
def test_fine_tune_name_does_not_matter(
    tmp_path: Path, tiny_jina_dir: Path, tiny_jina_code_dir: Path, which: str, name_or_path: str
) -> None:
    original = tiny_jina_dir if which == "plain" else tiny_jina_code_dir
    renamed = Path(shutil.copytree(original, tmp_path / "ft"))
    _edit_config(renamed, _name_or_path=name_or_path)
    embedder = embedkit.load(renamed, device="cpu")
    assert embedder.family == "jina_bert"
    np.testing.assert_array_equal(embedder.embed(TEXTS), embedkit.load(original, device="cpu").embed(TEXTS))


def test_fine_tune_without_auto_map_or_architectures(tmp_path: Path, tiny_jina_code_dir: Path) -> None:
    stripped = Path(shutil.copytree(tiny_jina_code_dir, tmp_path / "ft"))
    _edit_config(stripped, _name_or_path="someone/my-finetune", auto_map=None, architectures=None)
    embedder = embedkit.load(stripped, device="cpu")
    assert embedder.family == "jina_bert"
    np.testing.assert_array_equal(embedder.embed(TEXTS), embedkit.load(tiny_jina_code_dir, device="cpu").embed(TEXTS))


@pytest.mark.parametrize("which", ["plain", "code"])
def test_pickled_weights_pick_the_layout(
    tmp_path: Path, tiny_jina_dir: Path, tiny_jina_code_dir: Path, which: str
) -> None:
    original = tiny_jina_dir if which == "plain" else tiny_jina_code_dir
    pickled = Path(shutil.copytree(original, tmp_path / "pickled"))
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    loaded = embedkit.load(pickled, device="cpu", allow_pickle=True)
    np.testing.assert_allclose(loaded.embed(TEXTS), embedkit.load(original, device="cpu").embed(TEXTS), atol=1e-6)


@pytest.mark.parametrize(
    ("which", "prefix", "tensor"),
    [
        ("plain", "", "encoder.layer.1.mlp.wo.weight"),
        ("plain", "bert.", "encoder.layer.0.mlp.gated_layers.weight"),
        ("code", "", "encoder.layer.0.attention.self.layer_norm_q.weight"),
        ("code", "", "encoder.layer.1.layer_norm_2.bias"),
    ],
)
def test_missing_tensor_is_named(tmp_path: Path, minilm_dir: Path, which: str, prefix: str, tensor: str) -> None:
    model_dir = write_tiny_jina(tmp_path / "m", minilm_dir, layout=which, prefix=prefix)
    _rewrite_weights(model_dir, lambda state: state.pop(prefix + tensor))
    with pytest.raises(ModelLoadError, match=r"missing tensors: " + (prefix + tensor).replace(".", r"\.") + "$"):
        embedkit.load(model_dir, device="cpu")


@pytest.mark.parametrize(
    ("which", "tensor"),
    [("plain", "encoder.layer.0.mlp.gated_layers.weight"), ("code", "encoder.layer.0.mlp.up_gated_layer.weight")],
)
def test_shape_mismatch_names_tensor_and_shapes(
    tmp_path: Path, tiny_jina_dir: Path, tiny_jina_code_dir: Path, which: str, tensor: str
) -> None:
    broken = Path(shutil.copytree(tiny_jina_dir if which == "plain" else tiny_jina_code_dir, tmp_path / "shape"))
    _edit_config(broken, intermediate_size=64)
    with pytest.raises(ModelLoadError, match=tensor.replace(".", r"\.") + r".*\(160, 48\).*\(128, 48\)"):
        embedkit.load(broken, device="cpu")


def test_unexpected_tensor_is_named(tmp_path: Path, tiny_jina_dir: Path) -> None:
    broken = Path(shutil.copytree(tiny_jina_dir, tmp_path / "extra"))
    _rewrite_weights(broken, lambda state: state.update({"embeddings.position_embeddings.weight": torch.zeros(8, 48)}))
    with pytest.raises(ModelLoadError, match=r"unexpected tensors: embeddings\.position_embeddings\.weight"):
        embedkit.load(broken, device="cpu")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"feed_forward_type": "swiglu", "position_embedding_type": "alibi"}, r"feed_forward_type='swiglu'"),
        ({"position_embedding_type": "absolute"}, r"position_embedding_type='absolute'"),
    ],
)
def test_unsupported_config_is_named(tmp_path: Path, tiny_jina_dir: Path, changes: dict, message: str) -> None:
    broken = Path(shutil.copytree(tiny_jina_dir, tmp_path / "config"))
    _edit_config(broken, **changes)
    with pytest.raises(ModelLoadError, match=message):
        embedkit.load(broken, device="cpu")


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "min_cosine"), [("float32", 0.99999), ("float16", 0.999)])
@pytest.mark.parametrize("which", ["plain", "code"])
def test_cuda_matches_cpu(
    tiny_jina_dir: Path, tiny_jina_code_dir: Path, which: str, dtype: str, min_cosine: float
) -> None:
    model_dir = tiny_jina_dir if which == "plain" else tiny_jina_code_dir
    reference = embedkit.load(model_dir, device="cpu").embed(TEXTS)
    ours = embedkit.load(model_dir, device="cuda", dtype=dtype).embed(TEXTS)
    assert (ours * reference).sum(axis=1).min() >= min_cosine
