"""Qwen2 / Qwen3 decoders as embedders (gte-Qwen2-instruct, Qwen3-Embedding): native parity and golden vectors.

Native: tiny random checkpoints are written here as the Hub publishes them (gte-Qwen2: model_type
"qwen2", `model.`-prefixed names plus an `lm_head`, sharded, a tokenizer.json that does NOT append
`<|endoftext|>`; Qwen3-Embedding: unprefixed names, explicit head_dim != H / nh, q_norm / k_norm, a
tokenizer.json that appends it). The reference is transformers' own Qwen2Model / Qwen3Model, loaded
through `from_pretrained` from a native config.json (never the original one, whose auto_map asks for
remote code) beside copies of the same weight files, with eager attention and last-token pooling.

gte-Qwen2 runs bidirectionally. transformers' Qwen2Model is causal; it is made bidirectional here
by handing it a ready 4D additive mask (0 on real keys, the dtype minimum on padded keys, the same for
every query): `create_causal_mask` returns a 4D mask as it is, and eager attention only adds it to
the scores. `test_native_reference_is_bidirectional` checks that this really removes the causal
triangle (a later token moves an earlier token's state) and agrees with transformers' own
`is_causal=False` config flag.

Golden: shared/fixtures/qwen3-embedding holds a tiny Qwen3 checkpoint with vectors computed by
sentence-transformers (left padding, batches of 4) for several prompts, Matryoshka truncation and
unnormalised output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

import embedkit
from embedkit.errors import ModelLoadError
from embedkit.models import qwen
from embedkit.models.base import positions_from_mask
from embedkit.models.loading import assign_weights
from embedkit.models.pooling import pool
from embedkit.weights import load_state_dict

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "qwen3-embedding"

TEXTS = [
    "how do vector databases index embeddings?",
    "x",
    "Die Katze schläft auf dem Sofa, und der Hund bellt draußen im Garten.",
    "東京タワーは東京にあります。",
    "def search(q):\n    return index.query(q, k=10)",
    "A long passage about retrieval. " * 6,
]
CORPUS = [*TEXTS, "Qdrant stores points with payloads and supports filtered search.", "hello world"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MAX_SEQ_LENGTH = 128
QUERY_INSTRUCTION = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"

# -- tokenizers: byte-level BPE like Qwen's, the special tokens after the merges --------------------------


def byte_level_bpe(*, appends_end_of_text: bool, end_token: str = "<|endoftext|>") -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    tokenizer.add_special_tokens([end_token, *SPECIAL_TOKENS[1:]])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)  # as gte-Qwen2's tokenizer.json
    if appends_end_of_text:  # as Qwen3-Embedding's tokenizer.json
        end = tokenizer.token_to_id(end_token)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {end_token}", pair=f"$A {end_token} $B:1 {end_token}:1", special_tokens=[(end_token, end)]
        )
    return tokenizer


# -- checkpoints in the published layouts ---------------------------------------------------------------

QWEN2_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "auto_map": {
        "AutoModel": "modeling_qwen.Qwen2Model",
        "AutoModelForCausalLM": "modeling_qwen.Qwen2ForCausalLM",
        "AutoModelForSequenceClassification": "modeling_qwen.Qwen2ForSequenceClassification",
    },
    "model_type": "qwen2",
    "vocab_size": 320,  # past the tokenizer's, as Qwen's embedding tables are
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "use_sliding_window": False,
    "max_window_layers": 21,
    "tie_word_embeddings": False,
    "bos_token_id": 300,
    "eos_token_id": 300,
    "torch_dtype": "float32",
    "transformers_version": "4.41.2",
}  # no is_causal key, as the 7B's config.json

QWEN3_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "vocab_size": 320,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 24,  # explicit and != 64 / 4, as Qwen3's 128
    "intermediate_size": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 28,
    "tie_word_embeddings": False,
    "bos_token_id": 300,
    "eos_token_id": 300,
    "torch_dtype": "float32",
    "transformers_version": "4.51.3",
}


def random_state(config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random weights under the base model's names (no prefix); norms around 1 so they matter."""
    g = torch.Generator().manual_seed(seed)
    H, I = config["hidden_size"], config["intermediate_size"]
    nh, kv = config["num_attention_heads"], config["num_key_value_heads"]
    d = config.get("head_dim") or H // nh
    qwen3 = config["model_type"] == "qwen3"

    def randn(*shape: int, std: float = 0.1, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std + mean

    state = {"embed_tokens.weight": randn(config["vocab_size"], H, std=0.5), "norm.weight": randn(H, mean=1.0)}
    for n in range(config["num_hidden_layers"]):
        p = f"layers.{n}."
        state[p + "input_layernorm.weight"] = randn(H, mean=1.0)
        state[p + "post_attention_layernorm.weight"] = randn(H, mean=1.0)
        for part, rows in (("q", nh * d), ("k", kv * d), ("v", kv * d)):
            state[p + f"self_attn.{part}_proj.weight"] = randn(rows, H)
            if not qwen3:
                state[p + f"self_attn.{part}_proj.bias"] = randn(rows, std=0.2)
        state[p + "self_attn.o_proj.weight"] = randn(H, nh * d)
        if qwen3:
            state[p + "self_attn.q_norm.weight"] = randn(d, mean=1.0)
            state[p + "self_attn.k_norm.weight"] = randn(d, mean=1.0)
        state[p + "mlp.gate_proj.weight"] = randn(I, H)
        state[p + "mlp.up_proj.weight"] = randn(I, H)
        state[p + "mlp.down_proj.weight"] = randn(H, I)
    return state


def save_weights(target: Path, state: dict[str, torch.Tensor], shards: int = 1) -> None:
    """model.safetensors, or `shards` files plus model.safetensors.index.json, as save_pretrained writes them."""
    if shards == 1:
        save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
        return
    names, weight_map = sorted(state), {}
    for index in range(shards):
        filename = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: state[name] for name in names[index::shards]}
        save_file(part, str(target / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, filename))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (target / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )


def write_qwen(
    target: Path,
    config: dict,
    *,
    seed: int = 0,
    prefix: str = "",
    lm_head: bool = False,
    shards: int = 1,
    prompts: dict[str, str] | None = None,
) -> Path:
    """A tiny checkpoint with its tokenizer and sentence-transformers files (last-token pooling)."""
    state = {prefix + name: tensor for name, tensor in random_state(config, seed).items()}
    if lm_head:
        state["lm_head.weight"] = torch.randn(config["vocab_size"], config["hidden_size"])
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    save_weights(target, state, shards)
    byte_level_bpe(appends_end_of_text=config["model_type"] == "qwen3").save(str(target / "tokenizer.json"))
    (target / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (target / "modules.json").write_text(json.dumps(modules))
    (target / "1_Pooling").mkdir(exist_ok=True)
    (target / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": config["hidden_size"], "pooling_mode_lasttoken": True})
    )
    (target / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_SEQ_LENGTH}))
    if prompts is not None:
        (target / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    return target


def edit_config(model_dir: Path, target: Path, **changes: object) -> Path:
    other = Path(shutil.copytree(model_dir, target))
    config = json.loads((other / "config.json").read_text())
    config.update(changes)
    (other / "config.json").write_text(json.dumps(config))
    return other


@pytest.fixture(scope="module")
def gte_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_qwen(
        tmp_path_factory.mktemp("gte-qwen2"), QWEN2_CONFIG, seed=1, prefix="model.", lm_head=True, shards=3
    )


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prompts = {"query": QUERY_INSTRUCTION, "document": ""}
    return write_qwen(tmp_path_factory.mktemp("qwen3"), QWEN3_CONFIG, seed=2, prompts=prompts)


# -- the native transformers reference ------------------------------------------------------------------


def native_model(model_dir: Path, tmp_path: Path, **flags: object) -> torch.nn.Module:
    """transformers' Qwen2Model / Qwen3Model from_pretrained on copies of the weight files, eager attention."""
    from transformers import Qwen2Config, Qwen2Model, Qwen3Config, Qwen3Model

    original = json.loads((model_dir / "config.json").read_text())
    qwen3 = original["model_type"] == "qwen3"
    keys = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"]
    keys += ["intermediate_size", "hidden_act", "max_position_embeddings", "rms_norm_eps"]
    fields = {key: original[key] for key in keys}
    fields["rope_parameters"] = {"rope_type": "default", "rope_theta": original["rope_theta"]}
    if qwen3:
        fields.update(head_dim=original["head_dim"], attention_bias=original["attention_bias"])
    native = (Qwen3Config if qwen3 else Qwen2Config)(**fields, **flags)
    ref_dir = tmp_path / "native-reference"
    shutil.rmtree(ref_dir, ignore_errors=True)
    ref_dir.mkdir()
    native.save_pretrained(ref_dir)
    for path in model_dir.glob("model*.safetensors*"):
        shutil.copy(path, ref_dir / path.name)
    model, info = (Qwen3Model if qwen3 else Qwen2Model).from_pretrained(
        ref_dir, attn_implementation="eager", output_loading_info=True
    )
    assert not any(info.get(key) for key in ("missing_keys", "mismatched_keys")), info
    assert set(info.get("unexpected_keys") or ()) <= {"lm_head.weight"}, info
    return model.eval()


def padded_batch(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T] padded with a token the model never reads, mask [B, T] bool."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), 7, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), True
    assert not mask.all(), "the batch should be padded"
    return ids, mask


def full_attention_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] additive: every query sees every real key (no causal triangle)."""
    T = mask.shape[1]
    keys = mask[:, None, None, :].expand(-1, 1, T, T)
    return torch.zeros(keys.shape).masked_fill(~keys, torch.finfo(torch.float32).min)


def native_last_token(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, *, bidirectional: bool):
    attention_mask = full_attention_mask(mask) if bidirectional else mask.long()
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=attention_mask).last_hidden_state
    return pool(hidden, mask, ["lasttoken"]).numpy()


def token_rows(model_dir: Path, texts: list[str]) -> list[list[int]]:
    """Ids as the original models see them: the text, then <|endoftext|> exactly once."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    end = tokenizer.token_to_id("<|endoftext|>")
    rows = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    return [[*row, end] for row in rows]


def load_module(model_dir: Path) -> torch.nn.Module:
    """Our module as runtime.load builds it, without the runtime around it."""
    config = json.loads((model_dir / "config.json").read_text())
    with torch.device("meta"):
        module, layout = qwen.build(config, set(), str(model_dir))
    return assign_weights(module, load_state_dict(model_dir), layout, str(model_dir)).eval()


# -- gte-Qwen2: bidirectional -----------------------------------------------------------------------------


def test_gte_qwen2_matches_native_bidirectional(tmp_path: Path, gte_qwen2_dir: Path) -> None:
    assert (gte_qwen2_dir / "model.safetensors.index.json").is_file()
    assert not (gte_qwen2_dir / "model.safetensors").exists()
    embedder = embedkit.load(gte_qwen2_dir, device="cpu")
    assert embedder.family == "qwen" and embedder.max_input_tokens == MAX_SEQ_LENGTH
    ours = embedder.embed(TEXTS, normalize=False)

    ids, mask = padded_batch(token_rows(gte_qwen2_dir, TEXTS), "right")
    native = native_model(gte_qwen2_dir, tmp_path)
    expected = native_last_token(native, ids, mask, bidirectional=True)
    assert ours.shape == expected.shape == (len(TEXTS), 64)
    assert np.abs(ours - expected).max() < 1e-5

    # the classic mistake, running gte-Qwen2 causally, gives clearly other vectors
    causal = native_last_token(native, ids, mask, bidirectional=False)
    assert np.abs(ours - causal).max() > 1e-2

    # batched == single, and over several token-budget batches
    single = np.stack([embedder.embed([text], normalize=False)[0] for text in TEXTS])
    assert np.abs(ours - single).max() < 1e-5
    embedder.batch_tokens = 40
    assert np.abs(embedder.embed(TEXTS, normalize=False) - ours).max() < 1e-5


def test_gte_qwen2_is_causal_true_runs_causally(tmp_path: Path, gte_qwen2_dir: Path) -> None:
    """An explicit `is_causal: true` in config.json is obeyed, and then matches native causal Qwen2."""
    causal_dir = edit_config(gte_qwen2_dir, tmp_path / "causal", is_causal=True)
    ours = embedkit.load(causal_dir, device="cpu").embed(TEXTS, normalize=False)
    bidirectional = embedkit.load(gte_qwen2_dir, device="cpu").embed(TEXTS, normalize=False)
    assert np.abs(ours - bidirectional).max() > 1e-2
    ids, mask = padded_batch(token_rows(gte_qwen2_dir, TEXTS), "right")
    expected = native_last_token(native_model(gte_qwen2_dir, tmp_path), ids, mask, bidirectional=False)
    assert np.abs(ours - expected).max() < 1e-5


def test_native_reference_is_bidirectional(tmp_path: Path, gte_qwen2_dir: Path) -> None:
    """The 4D mask really removes the causal triangle, and agrees with transformers' is_causal=False."""
    native = native_model(gte_qwen2_dir, tmp_path)
    ids, mask = padded_batch(token_rows(gte_qwen2_dir, TEXTS[:3]), "right")
    changed = ids.clone()
    changed[0, int(mask[0].sum()) - 2] += 1  # a late real token of row 0

    def first_token_state(batch_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return native(input_ids=batch_ids, attention_mask=attention_mask).last_hidden_state[0, 0]

    full = full_attention_mask(mask)
    assert (first_token_state(ids, full) - first_token_state(changed, full)).abs().max() > 1e-3
    causal = mask.long()
    assert (first_token_state(ids, causal) - first_token_state(changed, causal)).abs().max() == 0

    flagged = native_model(gte_qwen2_dir, tmp_path, is_causal=False)
    a = native_last_token(native, ids, mask, bidirectional=True)
    b = native_last_token(flagged, ids, mask, bidirectional=False)  # 2D mask, transformers decides
    assert np.abs(a - b).max() < 1e-6


# -- Qwen3-Embedding: causal, left or right padding -------------------------------------------------------


def test_qwen3_matches_native_left_and_right_padding(tmp_path: Path, qwen3_dir: Path) -> None:
    module = load_module(qwen3_dir)
    native = native_model(qwen3_dir, tmp_path)
    rows = [e.ids for e in Tokenizer.from_file(str(qwen3_dir / "tokenizer.json")).encode_batch(TEXTS)]
    assert rows == token_rows(qwen3_dir, TEXTS)  # its tokenizer.json appends <|endoftext|> itself
    results = {}
    for side in ("left", "right"):
        ids, mask = padded_batch(rows, side)
        with torch.no_grad():
            states = module.forward_padded(ids, mask, positions_from_mask(mask))  # left padding too
            results[side] = pool(states, mask, ["lasttoken"]).numpy()
        expected = native_last_token(native, ids, mask, bidirectional=False)
        assert np.abs(results[side] - expected).max() < 1e-5, side
    assert np.abs(results["left"] - results["right"]).max() < 1e-5

    # through the runtime (right padding, sorted token-budget batches) and one text at a time
    embedder = embedkit.load(qwen3_dir, device="cpu")
    ours = embedder.embed(TEXTS, normalize=False)
    assert np.abs(ours - results["left"]).max() < 1e-5
    single = np.stack([embedder.embed([text], normalize=False)[0] for text in TEXTS])
    assert np.abs(ours - single).max() < 1e-5


def test_qwen3_bidirectional_flag(tmp_path: Path, qwen3_dir: Path) -> None:
    """use_bidirectional_attention: true (TEI's qwen3 flag) drops the causal triangle."""
    flagged = edit_config(qwen3_dir, tmp_path / "bidirectional", use_bidirectional_attention=True)
    ours = embedkit.load(flagged, device="cpu").embed(TEXTS, normalize=False)
    ids, mask = padded_batch(token_rows(qwen3_dir, TEXTS), "right")
    expected = native_last_token(native_model(qwen3_dir, tmp_path), ids, mask, bidirectional=True)
    assert np.abs(ours - expected).max() < 1e-5


# -- golden vectors from sentence-transformers ---------------------------------------------------------------


def _golden_cases() -> list[dict]:
    path = FIXTURES / "expected.json"
    return json.loads(path.read_text())["cases"] if path.is_file() else []


@pytest.fixture(scope="module")
def golden_embedder():
    return embedkit.load(FIXTURES / "model", device="cpu")


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, id=case["name"]) for case in _golden_cases()]
    or [pytest.param(None, marks=pytest.mark.skip(reason=f"{FIXTURES} is absent"))],
)
def test_golden_vectors(golden_embedder, case: dict) -> None:
    texts = json.loads((FIXTURES / "texts.json").read_text())
    assert golden_embedder.family == "qwen" and golden_embedder.describe()["pooling"] == ["lasttoken"]
    ours = golden_embedder.embed(
        texts, task=case["task"], dimensions=case["truncate_dim"], normalize=case["normalized"]
    )
    expected = np.asarray(case["embeddings"], dtype=np.float32)
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 1e-5


# -- tokenizer and prompts ------------------------------------------------------------------------------------


def test_prepare_tokenizer_appends_end_of_text_once() -> None:
    tokenizer = byte_level_bpe(appends_end_of_text=False)
    end = tokenizer.token_to_id("<|endoftext|>")
    plain = tokenizer.encode("hello world")
    assert end not in plain.ids
    prepared = qwen.prepare_tokenizer(tokenizer, {"model_type": "qwen2", "eos_token_id": end})
    single = prepared.encode("hello world")
    assert single.ids == [*plain.ids, end]
    assert single.offsets[:-1] == plain.offsets  # the ByteLevel post-processor still runs
    pair = prepared.encode("hello", "world")
    a, b = (tokenizer.encode(t, add_special_tokens=False).ids for t in ("hello", "world"))
    assert pair.ids == [*a, end, *b, end] and pair.type_ids == [0] * (len(a) + 1) + [1] * (len(b) + 1)
    assert prepared.encode("hello world", add_special_tokens=False).ids == plain.ids
    again = prepared.to_str()
    assert qwen.prepare_tokenizer(prepared, {}).to_str() == again  # idempotent: never appended twice


def test_prepare_tokenizer_leaves_an_appending_tokenizer_unchanged() -> None:
    tokenizer = byte_level_bpe(appends_end_of_text=True)
    before = tokenizer.to_str()
    assert qwen.prepare_tokenizer(tokenizer, {"model_type": "qwen3"}).to_str() == before


def test_prepare_tokenizer_falls_back_to_config_eos() -> None:
    tokenizer = byte_level_bpe(appends_end_of_text=False, end_token="</s>")
    end = tokenizer.token_to_id("</s>")
    prepared = qwen.prepare_tokenizer(tokenizer, {"eos_token_id": [end]})
    assert prepared.encode("hello").ids[-1] == end


def test_runtime_tokenizer_and_default_prompts(tmp_path: Path, gte_qwen2_dir: Path) -> None:
    """gte-Qwen2 through load(): one appended token per text, built-in prompts when the checkpoint has none."""
    embedder = embedkit.load(gte_qwen2_dir, device="cpu")
    assert embedder.input_overhead() == 1
    assert embedder.describe()["tasks"] == {"query": QUERY_INSTRUCTION + " ", "document": ""}
    assert qwen.default_prompts({"model_type": "qwen3"}) == {"query": QUERY_INSTRUCTION}
    assert qwen.default_prompts({"model_type": "qwen2"}) == {"query": QUERY_INSTRUCTION + " "}
    # the query prompt is really prepended
    query = embedder.embed(["what is qdrant"], task="query")
    assert np.abs(query - embedder.embed([QUERY_INSTRUCTION + " what is qdrant"])).max() < 1e-6
    assert np.abs(query - embedder.embed(["what is qdrant"], task="document")).max() > 1e-3


# -- errors -------------------------------------------------------------------------------------------------


def test_missing_q_norm_is_named(tmp_path: Path, qwen3_dir: Path) -> None:
    broken = Path(shutil.copytree(qwen3_dir, tmp_path / "broken"))
    state = load_file(str(broken / "model.safetensors"))
    del state["layers.1.self_attn.q_norm.weight"]
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"missing tensors: layers\.1\.self_attn\.q_norm\.weight"):
        embedkit.load(broken, device="cpu")


def test_heads_not_divisible_by_kv_heads(tmp_path: Path, qwen3_dir: Path) -> None:
    other = edit_config(qwen3_dir, tmp_path / "kv3", num_key_value_heads=3)
    with pytest.raises(ModelLoadError, match="num_attention_heads 4 is not divisible by num_key_value_heads 3"):
        embedkit.load(other, device="cpu")


def test_qwen2_config_over_qwen3_tensors(tmp_path: Path, qwen3_dir: Path) -> None:
    """model_type qwen2 beside Qwen3 weights: the q/k norms are unexpected, the qwen2 biases missing."""
    other = edit_config(qwen3_dir, tmp_path / "mislabelled", model_type="qwen2")
    with pytest.raises(ModelLoadError) as caught:
        embedkit.load(other, device="cpu")
    message = str(caught.value)
    assert "missing tensors: layers.0.self_attn.k_proj.bias" in message
    assert "unexpected tensors: layers.0.self_attn.k_norm.weight" in message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "RoPE scaling type 'yarn'"),
        ({"use_sliding_window": True}, "sliding-window attention"),
        ({"head_dim": 16}, r"tensor 'layers\.0\.self_attn\.q_proj\.weight' has shape \(96, 64\)"),
    ],
)
def test_unsupported_or_inconsistent_config(tmp_path: Path, qwen3_dir: Path, change: dict, message: str) -> None:
    other = edit_config(qwen3_dir, tmp_path / "other", **change)
    with pytest.raises(ModelLoadError, match=message):
        embedkit.load(other, device="cpu")


# -- half precision --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["gte_qwen2_dir", "qwen3_dir"])
def test_bfloat16_agrees_with_float32(request: pytest.FixtureRequest, variant: str) -> None:
    model_dir = request.getfixturevalue(variant)
    full = embedkit.load(model_dir, device="cpu").embed(TEXTS)
    half = embedkit.load(model_dir, device="cpu", dtype="bfloat16").embed(TEXTS)
    assert np.isfinite(half).all()
    assert (full * half).sum(axis=1).min() >= 0.99
