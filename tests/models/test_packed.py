"""The packed forward equals the padded one, for every family, and packed pooling equals padded pooling.

On the CPU the packed attention is the stand-in (pad -> SDPA -> unpad); the rest of the packed path
(embeddings, linear layers and norms over the N real tokens, RoPE from the batch's position ids,
per-token LoRA) is the code CUDA runs. The varlen kernel itself is checked against the stand-in on a
GPU (`gpu` marker).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from embedkit.local.batching import TokenBatch
from embedkit.models.base import EmbeddingModel, EncoderModel
from embedkit.models.layers import PackedAttention, varlen_attention
from embedkit.models.pooling import POOLING_MODES, pool, pool_packed

from ..conftest import write_tiny_bert
from .modules import load_module
from .test_gemma3 import write_gemma3
from .test_gte import write_gte
from .test_jina_bert import write_tiny_jina
from .test_modernbert import write_modernbert
from .test_mpnet import write_mpnet
from .test_nomic_bert import write_nomic
from .test_qwen import QWEN2_CONFIG, QWEN3_CONFIG, write_qwen
from .test_xlm_roberta import write_tiny_xlm_roberta

# different lengths, the longest (13) among them, and a one-token row
LENGTHS = (5, 1, 13, 2, 9, 13)


def write_jina_v3(target: Path, tokenizer_dir: Path) -> Path:
    from . import test_jina_v3  # skips (at import) when the jina-embeddings-v3 fixtures are absent

    return test_jina_v3.write_original(target, seed=3)


# name -> (writer(target, tokenizer_dir), what it covers)
WRITERS: dict[str, Callable[[Path, Path], Path]] = {
    "bert": lambda t, tok: write_tiny_bert(t, tok),  # absolute positions
    "xlm_roberta": lambda t, tok: write_tiny_xlm_roberta(t, tok),  # positions offset by padding_idx + 1
    "jina_bert": lambda t, tok: write_tiny_jina(t, tok, seed=1),  # ALiBi
    "jina_bert_code": lambda t, tok: write_tiny_jina(t, tok, layout="code", seed=2),  # ALiBi, qk-post-norm
    "gte": lambda t, tok: write_gte(t, tok),  # RoPE
    "gte_ntk_logn": lambda t, tok: write_gte(t, tok, ntk_factor=2.0, logn_attention_scale=True),  # NTK, per-row scale
    "gte_qwen2": lambda t, tok: write_qwen(t, QWEN2_CONFIG, seed=1, prefix="model."),  # RoPE, GQA, bidirectional
    "qwen3": lambda t, tok: write_qwen(t, QWEN3_CONFIG, seed=2),  # RoPE, GQA, causal, q/k norm
    "qwen3_bidirectional": lambda t, tok: write_qwen(t, {**QWEN3_CONFIG, "use_bidirectional_attention": True}),
    "jina_v3": write_jina_v3,  # RoPE, per-row LoRA
    "nomic_bert": lambda t, tok: write_nomic(t, tok, seed=3),  # RoPE (base 1000), fused Wqkv, SwiGLU
    "gemma3": lambda t, tok: write_gemma3(t, seed=2),  # two RoPE bases, symmetric sliding window (4 each side), GQA
    # global and sliding-window layers (window +-4 < the 13-token rows), two RoPE thetas
    "modernbert": lambda t, tok: write_modernbert(t, tok, seed=1),
    "mpnet": lambda t, tok: write_mpnet(t, tok, seed=7),  # learned relative-position bias, positions from 2
}


def random_rows(lengths: tuple[int, ...], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 300, (n,), generator=g).tolist() for n in lengths]  # within every tiny vocabulary


@pytest.fixture(scope="module", params=list(WRITERS))
def family_module(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path
) -> tuple[str, EncoderModel]:
    name = request.param
    return name, load_module(WRITERS[name](tmp_path_factory.mktemp(name), minilm_dir))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@torch.inference_mode()
def test_packed_equals_padded(family_module: tuple[str, EncoderModel]) -> None:
    name, module = family_module
    assert isinstance(module, EmbeddingModel)
    batch = TokenBatch.from_ids(random_rows(LENGTHS, seed=0))
    packed = module(batch, packed=True)
    padded = module(batch, packed=False)
    assert packed.shape == (sum(LENGTHS), module.hidden_size)
    assert max_diff(packed, padded) < 1e-5, name
    # rows never see each other: each row packed alone gives its slice of the batch
    starts = batch.cu_seqlens.tolist()
    for i, row in enumerate(random_rows(LENGTHS, seed=0)):
        alone = module(TokenBatch.from_ids([row]), packed=True)
        assert max_diff(alone, packed[starts[i] : starts[i + 1]]) < 1e-5, (name, i)


@torch.inference_mode()
def test_forward_padded_is_the_padded_view(family_module: tuple[str, EncoderModel]) -> None:
    """forward_padded (what ONNX export traces) gives [B, T, H] whose real tokens are the packed states."""
    name, module = family_module
    batch = TokenBatch.from_ids(random_rows(LENGTHS, seed=1))
    view = batch.padded()
    states = module.forward_padded(view.input_ids, view.attention_mask, view.position_ids, batch.adapter_ids)
    assert states.shape == (len(LENGTHS), max(LENGTHS), module.hidden_size)
    assert max_diff(states[view.attention_mask], module(batch, packed=True)) < 1e-5, name


@pytest.fixture(scope="module")
def jina_v3_module(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> EncoderModel:
    return load_module(write_jina_v3(tmp_path_factory.mktemp("jina-v3-lora"), minilm_dir))


@torch.inference_mode()
def test_per_row_lora_packed_equals_padded(jina_v3_module: EncoderModel) -> None:
    module = jina_v3_module
    rows = random_rows(LENGTHS, seed=2)
    adapters = [-1, 0, 3, -1, 4, 1]  # the base weights and several adapters in one batch
    batch = TokenBatch.from_ids(rows, adapter_ids=adapters)
    packed = module(batch, packed=True)
    assert max_diff(packed, module(batch, packed=False)) < 1e-5
    # each row equals that row run alone with its adapter, and the adapters change the states
    starts = batch.cu_seqlens.tolist()
    base = module(TokenBatch.from_ids(rows), packed=True)
    for i, (row, adapter) in enumerate(zip(rows, adapters, strict=True)):
        alone = module(TokenBatch.from_ids([row], adapter_ids=[adapter]), packed=True)
        assert max_diff(alone, packed[starts[i] : starts[i + 1]]) < 1e-5, i
        moved = max_diff(base[starts[i] : starts[i + 1]], packed[starts[i] : starts[i + 1]])
        assert (moved > 1e-3) == (adapter >= 0), i


@torch.inference_mode()
def test_merged_adapter_packed_equals_padded(tmp_path: Path, minilm_dir: Path) -> None:
    module = load_module(write_jina_v3(tmp_path / "m", minilm_dir))
    batch = TokenBatch.from_ids(random_rows(LENGTHS, seed=3), adapter_ids=[2] * len(LENGTHS))
    unmerged = module(batch, packed=True)
    module.merge_adapter(2)
    packed = module(batch, packed=True)
    assert max_diff(packed, module(batch, packed=False)) < 1e-5
    assert max_diff(packed, unmerged) < 1e-5
    with pytest.raises(ValueError, match="is merged"):
        module(TokenBatch.from_ids([[5, 6]], adapter_ids=[1]), packed=True)


def test_models_without_adapters_refuse_adapter_ids(tmp_path: Path, minilm_dir: Path) -> None:
    module = load_module(write_tiny_bert(tmp_path / "bert", minilm_dir))
    assert module.adapter_names == () and module.merged_adapter is None
    module(TokenBatch.from_ids([[5, 6]], adapter_ids=[-1]))  # base weights: fine
    with pytest.raises(ValueError, match="no adapters"):
        module(TokenBatch.from_ids([[5, 6]], adapter_ids=[0]))


# -- pooling -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt_lengths", [None, [2, 0, 3, 1, 9, 13]], ids=["no-prompt", "prompt"])
@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pool_packed_equals_pool(mode: str, prompt_lengths: list[int] | None) -> None:
    """Every mode; prompts dropped per row, including a one-token row and a row the prompt covers entirely."""
    batch = TokenBatch.from_ids(random_rows(LENGTHS, seed=4), prompt_lengths=prompt_lengths)
    hidden = torch.randn(batch.tokens, 8, generator=torch.Generator().manual_seed(5))
    view = batch.padded()
    padded_hidden = torch.zeros(batch.size, batch.max_length, 8)
    padded_hidden[view.attention_mask] = hidden
    skip = 0 if prompt_lengths is None else torch.tensor(prompt_lengths)
    expected = pool(padded_hidden, view.attention_mask, [mode], prompt_length=skip)
    got = pool_packed(hidden, batch, [mode])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_pool_packed_concatenates_modes_in_order() -> None:
    batch = TokenBatch.from_ids(random_rows(LENGTHS, seed=6))
    hidden = torch.randn(batch.tokens, 4, dtype=torch.float16)
    modes = ("lasttoken", "cls", "mean")
    got = pool_packed(hidden, batch, modes)
    assert got.shape == (batch.size, 12) and got.dtype == torch.float32
    for i, mode in enumerate(modes):
        torch.testing.assert_close(got[:, 4 * i : 4 * (i + 1)], pool_packed(hidden, batch, [mode]))


# -- the varlen kernel (CUDA) --------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "causal"), [(4, 4, False), (4, 4, True), (8, 2, True), (8, 2, False)])
def test_varlen_kernel_matches_stand_in(dtype: torch.dtype, heads: int, kv_heads: int, causal: bool) -> None:
    batch = TokenBatch.from_ids(random_rows(LENGTHS, seed=7)).to("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch.tokens, heads, 64, device="cuda", dtype=dtype, generator=g)
    k, v = (torch.randn(batch.tokens, kv_heads, 64, device="cuda", dtype=dtype, generator=g) for _ in range(2))
    attn = PackedAttention(batch.cu_seqlens, batch.max_length, tokens=batch.tokens, causal=causal)
    kernel = varlen_attention(q, k, v, batch.cu_seqlens, batch.max_length, causal=causal)
    assert max_diff(kernel.float(), attn.stand_in(q, k, v).float()) < (5e-3 if dtype == torch.float16 else 3e-2)


@pytest.mark.gpu
@torch.inference_mode()
def test_cuda_packed_matches_cpu_padded(family_module: tuple[str, EncoderModel]) -> None:
    name, module = family_module
    rows = random_rows(LENGTHS, seed=8)
    adapters = [-1, 0, 3, -1, 4, 1] if module.adapter_names else None
    batch = TokenBatch.from_ids(rows, adapter_ids=adapters)
    expected = module(batch, packed=False)
    on_gpu = copy.deepcopy(module).to("cuda", torch.float16)  # the fixture's fp32 module stays as it is
    got = on_gpu(batch.to("cuda"), packed=True).float().cpu()
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=-1)  # per token
    assert float(cosine.min()) > 0.99, name
