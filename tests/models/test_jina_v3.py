"""jina-embeddings-v3 family: golden vectors from the remote code, and transformers' native port.

Golden: shared/fixtures/jina-embeddings-v3 holds a tiny checkpoint in the original `XLMRobertaLoRA`
layout with vectors computed by the upstream remote code (`jinaai/xlm-roberta-flash-implementation`)
for every task, Matryoshka truncation and a mixed-task batch.

Native: a tiny random checkpoint is written here in the original layout (`roberta.` prefix, torch
parametrization names, five random non-zero adapters). The reference is transformers' own
`JinaEmbeddingsV3Model`, loaded through `from_pretrained` from a native config.json (model_type
"jina_embeddings_v3") beside a copy of the same weights in which this file merges one task's adapter
with the published formula (Linear: W + alpha/r * B[t] @ A[t]; Embedding: E + alpha/r * A[t] @ B[t])
and renames `.parametrizations.weight.original` to `.weight`. transformers then converts the names
itself (prefix, `emb_ln`, `Wqkv` split into q/k/v, `norm1`/`norm2`) and runs its own embeddings,
Llama-style RoPE, eager attention with an additive mask and CLIP-style MLP. embedkit shares only the
weight files: it runs the adapters unmerged, per row, as low-rank products (x A^T) B^T.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

import embedkit
from embedkit.errors import ModelLoadError
from embedkit.models.base import positions_from_mask
from embedkit.models.jina_v3 import LORA_LAYOUT, PLAIN_LAYOUT, JinaV3, build, task_instructions
from embedkit.models.loading import assign_weights
from embedkit.models.registry import detect_family
from embedkit.weights import load_state_dict, tensor_shapes

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "jina-embeddings-v3"
FIXTURE_MODEL = FIXTURES / "model"

if not (FIXTURE_MODEL / "tokenizer.json").is_file():
    pytest.skip(f"jina-embeddings-v3 fixtures not found at {FIXTURES}", allow_module_level=True)

TASKS = ["retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"]
TEXTS = json.loads((FIXTURES / "texts.json").read_text())
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
ST_FILES = ("modules.json", "config_sentence_transformers.json", "1_Pooling/config.json")
AUTO_MAP = {
    "AutoConfig": "jinaai/xlm-roberta-flash-implementation--configuration_xlm_roberta.XLMRobertaFlashConfig",
    "AutoModel": "jinaai/xlm-roberta-flash-implementation--modeling_lora.XLMRobertaLoRA",
}
H, I, LAYERS, RANK, ALPHA = 32, 64, 2, 2, 3  # scale alpha / rank = 1.5, not the published 0.25
LORA = ".parametrizations.weight."

# -- a checkpoint in the original layout -------------------------------------------------------------


def original_tensors(seed: int, vocab_size: int, n_adapters: int = len(TASKS)) -> dict[str, torch.Tensor]:
    """Random weights under XLMRobertaLoRA's state-dict names, adapters included."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std + mean

    state: dict[str, torch.Tensor] = {}

    def adapted(name: str, weight: torch.Tensor, embedding: bool = False) -> None:
        rows, cols = weight.shape
        state[f"{name}{LORA}original"] = weight
        if embedding:  # A [n, vocab, r], B [n, r, dim]
            a, b = randn(n_adapters, rows, RANK, std=0.5), randn(n_adapters, RANK, cols, std=0.5)
        else:  # A [n, r, in], B [n, out, r]
            a, b = randn(n_adapters, RANK, cols, std=0.3), randn(n_adapters, rows, RANK, std=0.3)
        state[f"{name}{LORA}0.lora_A"], state[f"{name}{LORA}0.lora_B"] = a, b

    def linear(name: str, out: int, inp: int) -> None:
        adapted(name, randn(out, inp, std=0.1))
        state[f"{name}.bias"] = randn(out, std=0.05)

    def norm(name: str) -> None:
        state[f"{name}.weight"], state[f"{name}.bias"] = randn(H, std=0.1, mean=1.0), randn(H, std=0.1)

    adapted("roberta.embeddings.word_embeddings", randn(vocab_size, H, std=0.5), embedding=True)
    adapted("roberta.embeddings.token_type_embeddings", randn(1, H, std=0.5), embedding=True)
    norm("roberta.emb_ln")
    for n in range(LAYERS):
        p = f"roberta.encoder.layers.{n}."
        linear(p + "mixer.Wqkv", 3 * H, H)
        linear(p + "mixer.out_proj", H, H)
        norm(p + "norm1")
        linear(p + "mlp.fc1", I, H)
        linear(p + "mlp.fc2", H, I)
        norm(p + "norm2")
    linear("roberta.pooler.dense", H, H)  # saved by XLMRobertaLoRA, not part of the embedding
    return state


def write_original(target: Path, seed: int = 0) -> Path:
    """A tiny random jina-embeddings-v3 as the Hub publishes it: remote-code config, names, ST files."""
    vocab_size = Tokenizer.from_file(str(FIXTURE_MODEL / "tokenizer.json")).get_vocab_size()
    config = {
        "architectures": ["XLMRobertaModel"],  # as published: no model_type key
        "auto_map": AUTO_MAP,
        "vocab_size": vocab_size,
        "hidden_size": H,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,  # head dim 8
        "intermediate_size": I,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 8194,
        "type_vocab_size": 1,
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "position_embedding_type": "rotary",
        "rotary_emb_base": 5000.0,
        "lora_adaptations": TASKS,
        "task_instructions": json.loads((FIXTURE_MODEL / "config.json").read_text())["task_instructions"],
        "lora_rank": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout_p": 0.0,
        "lora_main_params_trainable": False,
        "load_trained_adapters": True,
        "use_flash_attn": True,
        "emb_pooler": None,
        "matryoshka_dimensions": [8, 16, 32],
        "truncate_dim": None,
        "torch_dtype": "bfloat16",
    }
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    save_file(original_tensors(seed, vocab_size), str(target / "model.safetensors"), metadata={"format": "pt"})
    (target / "1_Pooling").mkdir(exist_ok=True)
    for name in (*TOKENIZER_FILES, *ST_FILES):
        shutil.copy(FIXTURE_MODEL / name, target / name)
    return target


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_original(tmp_path_factory.mktemp("tiny-jina-v3"))


def load_module(model_dir: Path) -> JinaV3:
    """The model as `embedkit.load` builds it: on the meta device, then the weights by name."""
    config = json.loads((model_dir / "config.json").read_text())
    with torch.device("meta"):
        model, layout = build(config, set(tensor_shapes(model_dir)), str(model_dir))
    assign_weights(model, load_state_dict(model_dir), layout, str(model_dir))
    return model.eval()


def tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and bool mask, from the fixture's tokenizer.json (<s> ... </s>, pad 1)."""
    encodings = Tokenizer.from_file(str(FIXTURE_MODEL / "tokenizer.json")).encode_batch(texts)
    width = max(len(e.ids) for e in encodings)
    ids = torch.ones(len(texts), width, dtype=torch.long)
    mask = torch.zeros(len(texts), width, dtype=torch.bool)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids)
        mask[row, : len(encoding.ids)] = True
    return ids, mask


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    weights = mask.unsqueeze(-1).float()
    return ((hidden.float() * weights).sum(1) / weights.sum(1)).numpy()


def padded(
    model: JinaV3, ids: torch.Tensor, mask: torch.Tensor, adapter_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """The model's padded forward, [B, T, H], positions counted over each row's real tokens."""
    return model.forward_padded(ids, mask, positions_from_mask(mask), adapter_ids)


def run(model: JinaV3, texts: list[str], adapter: int | list[int] | None = None) -> np.ndarray:
    ids, mask = tokenize(texts)
    adapter_ids = None if adapter is None else torch.tensor(adapter).expand(len(texts)).contiguous()
    with torch.inference_mode():
        return mean_pool(padded(model, ids, mask, adapter_ids), mask)


# -- transformers' native reference ----------------------------------------------------------------


def merged_native_weights(state: dict[str, torch.Tensor], config: dict, task: int | None) -> dict[str, torch.Tensor]:
    """The original tensors with adapter `task` merged (None: base weights) and plain `.weight` names."""
    scale = config["lora_alpha"] / config["lora_rank"]
    out = {}
    for name, tensor in state.items():
        if ".lora_" in name:
            continue
        if name.endswith(LORA + "original"):
            module = name[: -len(LORA + "original")]
            if task is not None:
                a, b = state[f"{module}{LORA}0.lora_A"][task], state[f"{module}{LORA}0.lora_B"][task]
                embedding = module.endswith("_embeddings")
                tensor = tensor + (a @ b if embedding else b @ a) * scale
            name = module + ".weight"
        out[name] = tensor.contiguous()
    return out


def native_model(model_dir: Path, target: Path, task: int | None):
    """transformers' JinaEmbeddingsV3Model on the same weights, adapter `task` merged by the formula above."""
    from transformers import JinaEmbeddingsV3Config, JinaEmbeddingsV3Model

    original = json.loads((model_dir / "config.json").read_text())
    native = JinaEmbeddingsV3Config(
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
        rope_parameters={"rope_type": "default", "rope_theta": original["rotary_emb_base"]},
    )
    target.mkdir(parents=True)
    native.save_pretrained(target)
    state = merged_native_weights(load_file(str(model_dir / "model.safetensors")), original, task)
    assert not any(LORA in name for name in state) and "roberta.emb_ln.weight" in state
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    model, info = JinaEmbeddingsV3Model.from_pretrained(target, attn_implementation="eager", output_loading_info=True)
    assert not any(info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def run_native(model: torch.nn.Module, texts: list[str]) -> np.ndarray:
    ids, mask = tokenize(texts)
    with torch.inference_mode():
        return mean_pool(model(input_ids=ids, attention_mask=mask.long()).last_hidden_state, mask)


@pytest.mark.parametrize("task", [None, *range(len(TASKS))], ids=["base", *TASKS])
def test_matches_transformers_native(tmp_path: Path, tiny_dir: Path, task: int | None) -> None:
    _, mask = tokenize(TEXTS)
    assert (~mask).any() and mask.sum(1).max() > 100, "a padded batch of mixed lengths"
    ours = run(load_module(tiny_dir), TEXTS, task)
    expected = run_native(native_model(tiny_dir, tmp_path / "native", task), TEXTS)
    assert ours.shape == expected.shape == (len(TEXTS), H)
    assert np.abs(ours - expected).max() < 1e-5
    if task is not None:  # the adapter really changes the output, so the comparison is not vacuous
        assert np.abs(ours - run(load_module(tiny_dir), TEXTS)).max() > 1e-2


@pytest.mark.parametrize("head", ["model", "masked_lm"])
def test_native_layout_loads(tmp_path: Path, tiny_dir: Path, head: str) -> None:
    """What transformers' save_pretrained writes: original module names, plain weights, no adapters."""
    from transformers import JinaEmbeddingsV3ForMaskedLM

    native = native_model(tiny_dir, tmp_path / "merged", task=2)
    saved = tmp_path / "saved"
    if head == "model":
        native.save_pretrained(saved)
    else:  # `roberta.` prefix, an lm_head, no pooler
        masked = JinaEmbeddingsV3ForMaskedLM(native.config)
        masked.roberta.load_state_dict({k: v for k, v in native.state_dict().items() if not k.startswith("pooler.")})
        masked.save_pretrained(saved)
    names = set(tensor_shapes(saved))
    assert ("roberta." if head == "masked_lm" else "") + "encoder.layers.0.mixer.Wqkv.weight" in names
    assert not any(LORA in name for name in names)
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "jina_embeddings_v3" and "rotary_emb_base" not in config
    detection = detect_family(config, names, str(saved))
    assert detection.family.name == "jina_v3" and "config.json: model_type is 'jina_embeddings_v3'" in detection.reasons

    model = load_module(saved)
    assert model.adapter_names == () and model.config.rotary_emb_base == 5000.0
    expected = run(load_module(tiny_dir), TEXTS, 2)
    assert np.abs(run(model, TEXTS) - expected).max() < 1e-5
    with pytest.raises(ValueError, match="adapter_ids must be -1"):
        run(model, TEXTS, 0)


# -- adapters: mixed batches and merging -------------------------------------------------------------


def test_mixed_adapters_equal_separate_batches(tiny_dir: Path) -> None:
    model = load_module(tiny_dir)
    adapters = [-1, 0, 1, 2, 3, 4, 4, 3, 2, 1, 0, -1]
    assert len(adapters) == len(TEXTS)
    ids, mask = tokenize(TEXTS)
    with torch.inference_mode():
        mixed = padded(model, ids, mask, torch.tensor(adapters))
    for adapter in range(-1, len(TASKS)):
        rows = [i for i, a in enumerate(adapters) if a == adapter]
        texts = [TEXTS[i] for i in rows]
        sub_ids, sub_mask = tokenize(texts)  # padded to their own width
        with torch.inference_mode():
            alone = padded(model, sub_ids, sub_mask, None if adapter == -1 else torch.full((len(rows),), adapter))
        for j, i in enumerate(rows):
            n = int(mask[i].sum())
            assert np.abs((mixed[i, :n] - alone[j, :n]).numpy()).max() < 1e-5, (adapter, i)


@pytest.mark.parametrize("task", range(len(TASKS)), ids=TASKS)
def test_merge_adapter_equals_unmerged(tiny_dir: Path, task: int) -> None:
    model = load_module(tiny_dir)
    ids, mask = tokenize(TEXTS)
    with torch.inference_mode():
        unmerged = padded(model, ids, mask, torch.full((len(TEXTS),), task))
    model.merge_adapter(task)
    assert model.merged_adapter == task
    assert not any("lora" in name for name in model.state_dict())
    with torch.inference_mode():
        merged = padded(model, ids, mask, torch.full((len(TEXTS),), task))
        also_merged = padded(model, ids, mask)
    assert torch.equal(merged, also_merged)
    assert np.abs((merged - unmerged)[mask].numpy()).max() < 1e-5
    with pytest.raises(ValueError, match=f"adapter {task} .* is merged"):
        padded(model, ids, mask, torch.full((len(TEXTS),), (task + 1) % len(TASKS)))
    with pytest.raises(ValueError, match="already merged"):
        model.merge_adapter(task)


def test_merge_keeps_dtype_and_base_model_is_untouched(tiny_dir: Path) -> None:
    base = load_module(tiny_dir)
    model = load_module(tiny_dir).to(torch.bfloat16)
    model.merge_adapter(1)
    qkv = model.layers[0].attn.qkv
    assert qkv.weight.dtype == torch.bfloat16 and qkv.lora_A is None
    # folded in fp32 from the bf16 tensors, then cast back once
    ref = base.layers[0].attn.qkv
    expected = ref.weight.to(torch.bfloat16).float() + (
        ref.lora_B[1].to(torch.bfloat16).float() @ ref.lora_A[1].to(torch.bfloat16).float() * ALPHA / RANK
    )
    assert torch.equal(qkv.weight, expected.to(torch.bfloat16))


@pytest.mark.parametrize(
    ("adapter_ids", "message"),
    [
        ([5] * 3, r"adapter_ids must be -1 \(base weights\) or an adapter index \(0='retrieval\.query'"),
        ([0, -2, 0], r"got -2\.\.0"),
        ([0, 0], r"adapter_ids has shape \(2,\), expected \(3,\)"),
    ],
)
def test_bad_adapter_ids_are_refused(tiny_dir: Path, adapter_ids: list[int], message: str) -> None:
    model = load_module(tiny_dir)
    ids, mask = tokenize(TEXTS[:3])
    with pytest.raises(ValueError, match=message):
        padded(model, ids, mask, torch.tensor(adapter_ids))


# -- golden vectors from the original remote code ----------------------------------------------------

GOLDEN = json.loads((FIXTURES / "expected.json").read_text())
GOLDEN_CASES = [case["name"] for case in GOLDEN["cases"]]


def _case(name: str) -> dict:
    return next(case for case in GOLDEN["cases"] if case["name"] == name)


@pytest.fixture(scope="module")
def golden_model() -> JinaV3:
    return load_module(FIXTURE_MODEL)


def _postprocess(vectors: np.ndarray, case: dict) -> np.ndarray:
    # upstream encode(): truncate to truncate_dim first, then L2-normalise
    if case["truncate_dim"]:
        vectors = vectors[:, : case["truncate_dim"]]
    if case["normalized"]:
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_golden_vectors(name: str, golden_model: JinaV3) -> None:
    case = _case(name)
    config = json.loads((FIXTURE_MODEL / "config.json").read_text())
    tasks = case["task"] if isinstance(case["task"], list) else [case["task"]] * len(TEXTS)
    instructions = task_instructions(config)
    inputs = [("" if task is None else instructions[task]) + text for task, text in zip(tasks, TEXTS, strict=True)]
    assert inputs == case["inputs"]
    ids, _ = tokenize(inputs)
    assert [row[row != 1].tolist() for row in ids] == case["input_ids"]
    adapter = case["task_id"]
    vectors = _postprocess(run(golden_model, inputs, adapter), case)
    expected = np.asarray(case["embeddings"], dtype=np.float32)
    assert vectors.shape == expected.shape == (len(TEXTS), case["dim"])
    assert np.abs(vectors - expected).max() < 1e-5


@pytest.fixture(scope="module")
def golden_embedder():
    return embedkit.load(FIXTURE_MODEL, device="cpu")


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_golden_end_to_end(name: str, golden_embedder) -> None:
    """embedkit.load + embed(task=...): prompt, adapter, Matryoshka and normalisation from the runtime."""
    case = _case(name)
    assert golden_embedder.family == "jina_v3"
    task, dimensions, normalize = case["task"], case["truncate_dim"], case["normalized"]
    ours = golden_embedder.embed(TEXTS, task=task, dimensions=dimensions, normalize=normalize)
    assert np.abs(ours - np.asarray(case["embeddings"], dtype=np.float32)).max() < 1e-5


def test_golden_without_prompt_file_uses_task_instructions(tmp_path: Path) -> None:
    model_dir = Path(shutil.copytree(FIXTURE_MODEL, tmp_path / "no-st-prompts"))
    (model_dir / "config_sentence_transformers.json").unlink()
    case = _case("task:retrieval.query")
    ours = embedkit.load(model_dir, device="cpu").embed(TEXTS, task="retrieval.query")
    assert np.abs(ours - np.asarray(case["embeddings"], dtype=np.float32)).max() < 1e-5


def test_golden_merged_adapter_end_to_end() -> None:
    case = _case("task:retrieval.passage")
    embedder = embedkit.load(FIXTURE_MODEL, device="cpu", default_task="retrieval.passage", merge_lora=True)
    assert embedder.describe()["merged_adapter"] == "retrieval.passage"  # adapter 1
    ours = embedder.embed(TEXTS, task="retrieval.passage")
    assert np.abs(ours - np.asarray(case["embeddings"], dtype=np.float32)).max() < 1e-5


def test_fixture_config_and_layout(golden_model: JinaV3) -> None:
    config = json.loads((FIXTURE_MODEL / "config.json").read_text())
    assert golden_model.adapter_names == tuple(TASKS) and golden_model.merged_adapter is None
    assert golden_model.max_positions == 1024 and golden_model.learned_positions is False
    assert task_instructions(config)["retrieval.query"].startswith("Represent the query")
    names = set(tensor_shapes(FIXTURE_MODEL))
    assert detect_family(config, names, "fixture").family.name == "jina_v3"
    assert "roberta." + LORA_LAYOUT.anchor in names and "roberta." + PLAIN_LAYOUT.anchor not in names


# -- loading errors ----------------------------------------------------------------------------------


def _edit_config(model_dir: Path, **changes: object) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config.update(changes)
    (model_dir / "config.json").write_text(json.dumps(config))


def test_missing_lora_tensor_is_named(tmp_path: Path, tiny_dir: Path) -> None:
    broken = Path(shutil.copytree(tiny_dir, tmp_path / "broken"))
    state = load_file(str(broken / "model.safetensors"))
    del state[f"roberta.encoder.layers.1.mlp.fc1{LORA}0.lora_B"]
    save_file(state, str(broken / "model.safetensors"))
    pattern = r"missing tensors: roberta\.encoder\.layers\.1\.mlp\.fc1\.parametrizations\.weight\.0\.lora_B$"
    with pytest.raises(ModelLoadError, match=pattern):
        embedkit.load(broken, device="cpu")


def test_adapter_count_must_match_lora_adaptations(tmp_path: Path, tiny_dir: Path) -> None:
    broken = Path(shutil.copytree(tiny_dir, tmp_path / "four"))
    _edit_config(broken, lora_adaptations=TASKS[:4])
    vocab = json.loads((broken / "config.json").read_text())["vocab_size"]
    pattern = (
        rf"{broken}: tensor 'roberta\.embeddings\.word_embeddings\.parametrizations\.weight\.0\.lora_A' "
        rf"has shape \(5, {vocab}, 2\), the config implies \(4, {vocab}, 2\)"
    )
    with pytest.raises(ModelLoadError, match=pattern):
        embedkit.load(broken, device="cpu")


def test_lora_tensors_need_lora_adaptations(tmp_path: Path, tiny_dir: Path) -> None:
    broken = Path(shutil.copytree(tiny_dir, tmp_path / "unnamed"))
    _edit_config(broken, lora_adaptations=None)
    pattern = r"config\.json: the weights carry LoRA adapters .* lora_adaptations is None"
    with pytest.raises(ModelLoadError, match=pattern):
        embedkit.load(broken, device="cpu")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"position_embedding_type": "absolute"}, r"position_embedding_type='absolute'"),
        ({"rotary_emb_interleaved": True}, r"rotary_emb_interleaved=true"),
        ({"rotary_emb_scale_base": 512}, r"rotary_emb_scale_base is set \(xPos\)"),
        ({"rotary_emb_dim": 4}, r"rotary_emb_dim=4 \(partial rotary\)"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, r"rope_type='yarn'"),
        ({"hidden_act": "tanh"}, r"hidden_act='tanh'"),
    ],
)
def test_unsupported_config_is_named(tmp_path: Path, tiny_dir: Path, changes: dict, message: str) -> None:
    broken = Path(shutil.copytree(tiny_dir, tmp_path / "config"))
    _edit_config(broken, **changes)
    with pytest.raises(ModelLoadError, match=message):
        embedkit.load(broken, device="cpu")


def test_pickled_weights_pick_the_layout(tmp_path: Path, tiny_dir: Path) -> None:
    pickled = Path(shutil.copytree(tiny_dir, tmp_path / "pickled"))
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    texts = TEXTS[:4]
    a = embedkit.load(pickled, device="cpu", allow_pickle=True).embed(texts, task="separation")
    b = embedkit.load(tiny_dir, device="cpu").embed(texts, task="separation")
    np.testing.assert_array_equal(a, b)


# -- CUDA --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "min_cosine"), [("float32", 0.99999), ("float16", 0.999), ("bfloat16", 0.99)])
def test_cuda_matches_cpu(tiny_dir: Path, dtype: str, min_cosine: float) -> None:
    tasks = [None, *TASKS, *TASKS, None]  # one batch mixing every adapter and the base weights
    reference = embedkit.load(tiny_dir, device="cpu").embed(TEXTS, task=tasks)
    ours = embedkit.load(tiny_dir, device="cuda", dtype=dtype).embed(TEXTS, task=tasks)
    assert (ours * reference).sum(axis=1).min() >= min_cosine


@pytest.mark.gpu
def test_cuda_module_takes_host_adapter_ids(tiny_dir: Path) -> None:
    model = load_module(tiny_dir)
    adapters = torch.tensor([-1, 0, 1, 2, 3, 4, 4, 3, 2, 1, 0, -1])
    ids, mask = tokenize(TEXTS)
    with torch.inference_mode():
        expected = padded(model, ids, mask, adapters)
        ours = padded(model.cuda(), ids.cuda(), mask.cuda(), adapters).cpu()
    assert (ours - expected)[mask].abs().max() < 1e-4
