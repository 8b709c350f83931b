"""LocalEmbedder: texts -> vectors in this process. Built by `embedkit.load` (loader.py).

The data path of `embed`: tasks -> prompts and adapters (a TextPlan), tokens (tokens.Encoder),
TokenBatches under a token budget, longest first (batching.pack), one forward pass each, pooling,
input order restored, then the one post-processing path (embedder.postprocess).

A caller that batches by its own token budget (the server's dynamic batcher) builds one batch of
already-encoded rows with `token_batch(ids, task=tasks)` and runs it with `embed_token_batch(batch)`,
which gives the raw pooled vectors for it to post-process per request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from tokenizers import Encoding, Tokenizer
from torch import nn

from embedkit.embedder import (
    EmbedderBase,
    check_dimensions,
    check_embed_args,
    iter_windows,
    postprocess,
    validate_text,
    validate_texts,
)
from embedkit.errors import InputError
from embedkit.local import late
from embedkit.local.batching import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_BATCH_SIZE, TokenBatch, pack
from embedkit.local.tokens import Encoder, TextPlan, plan_tasks
from embedkit.models.base import EmbeddingModel
from embedkit.models.bge_m3 import M3Embeddings, M3Heads
from embedkit.models.dense import DenseStack
from embedkit.models.pooling import pool_packed
from embedkit.models.registry import Family
from embedkit.models.st_files import PipelineFiles
from embedkit.onnx.model import OnnxModel
from embedkit.tasks import TaskTable
from embedkit.weights import weights_digest

__all__ = ["DEFAULT_STREAM_WINDOW", "LocalEmbedder", "ModelDescription"]

DEFAULT_STREAM_WINDOW = 4096  # texts per embed_iter window: long enough to sort well, short enough to hold


class ModelDescription(TypedDict):
    """`LocalEmbedder.describe()`: a plain JSON-ready dict (`embedkit inspect --json` prints it), keys in this order."""

    model_id: str
    path: str
    family: str
    detected_by: list[str]  # the evidence for `family`: what config.json and the tensor names said
    dimension: int
    matryoshka_dimensions: list[int] | None
    max_input_tokens: int
    pooling: list[str]  # sentence-transformers pooling modes, e.g. ["mean"]
    tasks: dict[str, str]  # task -> the prompt prefix it puts before each text
    default_prompt_name: str | None
    default_task: str | None
    adapters: list[str]  # LoRA adapter names (jina-embeddings-v3); empty for most models
    merged_adapter: str | None  # the adapter folded into the weights (merge_lora=True)
    device: str
    backend: str  # "torch", "onnx" or "onnx int8"
    dtype: str  # of the weights: "float32", "float16", "bfloat16", "int8"
    heads: list[str]  # bge-m3's extra heads: "sparse_linear.pt: lexical weights (H -> 1)", ...; empty for most


class LocalEmbedder(EmbedderBase):
    """An embedding model running in this process on CPU or GPU. Build it with `embedkit.load`."""

    def __init__(
        self,
        *,
        model: EmbeddingModel,
        tokenizer: Tokenizer,
        family: Family,
        detection_reasons: Sequence[str] = (),
        pipeline: PipelineFiles,
        model_id: str,
        model_dir: Path,
        max_seq_length: int,
        matryoshka_dimensions: Sequence[int] | None,
        device: torch.device,
        prompts: Mapping[str, str] | None = None,
        default_task: str | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        dense: DenseStack | None = None,
        heads: M3Heads | None = None,
    ) -> None:
        self._model = model
        self._dense = dense  # the pipeline's Dense modules, applied after pooling (models/dense.py)
        self._heads = heads  # bge-m3's lexical and ColBERT heads over the token states (models/bge_m3.py)
        self._family = family
        self._detection_reasons = tuple(detection_reasons)
        self._pipeline = pipeline
        self._model_id = model_id
        self._model_dir = model_dir
        self._matryoshka = list(matryoshka_dimensions) if matryoshka_dimensions else None
        self._device = device
        self._task_table = TaskTable(
            pipeline.prompts if prompts is None else prompts,
            pipeline.default_prompt_name,
            adapters=model.adapter_names,
        )
        if default_task is not None:
            self._task_table.resolve(default_task)  # UnknownTaskError lists the valid ones
        self.default_task = default_task
        self._pooling = pipeline.pooling_modes or family.default_pooling
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self._encoder = Encoder(
            tokenizer,
            max_length=max_seq_length,
            lower_case=pipeline.do_lower_case,
            include_prompt=pipeline.include_prompt,
        )
        # each pooling mode gives one hidden-size vector; no forward pass, so a lazily exported graph
        # is not built for nothing
        self._dimension = model.hidden_size * len(self._pooling) if dense is None else dense.out_features

    def __repr__(self) -> str:
        return (
            f"LocalEmbedder(model_id={self._model_id!r}, family={self._family.name!r}, "
            f"dimension={self._dimension}, device={str(self._device)!r}, backend={self._backend_label!r})"
        )

    # -- what was loaded ------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_input_tokens(self) -> int:
        return self._encoder.max_length

    @property
    def tasks(self) -> list[str]:
        return self._task_table.names

    @property
    def matryoshka_dimensions(self) -> list[int] | None:
        """The truncation sizes the model was trained for, when its config lists them."""
        return self._matryoshka

    @property
    def family(self) -> str:
        return self._family.name

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def model(self) -> EmbeddingModel:
        """What runs the forward pass: the family's torch module, or the OnnxModel standing in for it."""
        return self._model

    @property
    def truncated_count(self) -> int:
        """Inputs cut (to max_input_tokens or a caller's max_length) over this embedder's life."""
        return self._encoder.truncated_count

    @property
    def backend(self) -> str:
        """ "onnx" when ONNX Runtime runs the model, else "torch"."""
        return "onnx" if isinstance(self._model, OnnxModel) else "torch"

    @property
    def quantize(self) -> str | None:
        """ "int8" when the ONNX graph runs int8 weights, else None."""
        return self._model.quantize if isinstance(self._model, OnnxModel) else None

    @cached_property
    def weights_digest(self) -> str:
        """sha256 of the weight files (and of the Dense modules' weights, which decide the vectors too):
        identifies these exact weights in ingest fingerprints."""
        digest = weights_digest(self._model_dir)
        if self._dense is None:
            return digest
        combined = hashlib.sha256(digest.encode())
        for name, tensor in self._dense.state_dict().items():
            combined.update(name.encode())
            combined.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return combined.hexdigest()

    def describe(self) -> ModelDescription:
        """What was loaded and why: family and the evidence for it, sizes, pooling, prompts."""
        merged = self._merged_adapter_name
        if isinstance(self._model, nn.Module):
            dtype = str(next(self._model.parameters()).dtype).removeprefix("torch.")
        else:  # ONNX Runtime; int8 is the weights', activations and outputs stay float32
            dtype = self.quantize or "float32"
        return {
            "model_id": self._model_id,
            "path": str(self._model_dir),
            "family": self._family.name,
            "detected_by": list(self._detection_reasons),
            "dimension": self._dimension,
            "matryoshka_dimensions": self._matryoshka,
            "max_input_tokens": self.max_input_tokens,
            "pooling": list(self._pooling),
            "tasks": {task: self._task_table.prefix(task) for task in self.tasks},
            "default_prompt_name": self._pipeline.default_prompt_name,
            "default_task": self.default_task,
            "adapters": list(self._task_table.adapters),
            "merged_adapter": merged,
            "device": str(self._device),
            "backend": self._backend_label,
            "dtype": dtype,
            "heads": self._head_descriptions(),
        }

    def _head_descriptions(self) -> list[str]:
        heads = self._heads
        if heads is None:
            return []
        described = []
        for name, what in (("sparse", "lexical weights"), ("colbert", "ColBERT vectors")):
            layer = getattr(heads, name)
            if layer is not None:
                described.append(f"{heads.files[name].name}: {what} ({layer.in_features} -> {layer.out_features})")
        return described

    @property
    def _backend_label(self) -> str:
        return f"{self.backend} {self.quantize}" if self.quantize else self.backend

    # -- embedding ------------------------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str],
        *,
        task: str | Sequence[str | None] | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool = True,
        truncation_direction: str = "right",
    ) -> np.ndarray:
        """Embed `texts` -> float32 array (len(texts), dimensions or dimension), input order kept.

        `task` picks the model's prompt and, for jina-embeddings-v3, its LoRA adapter (see `tasks`):
        one name for every text, or a list with one per text (None = `default_task`; with none, the
        plain model). A mixed call equals embedding each task's texts separately. `normalize`
        L2-normalises (the default); `dimensions` keeps the first k Matryoshka dimensions, then
        normalises; `truncate=False` raises InputError for a text longer than `max_input_tokens`
        instead of cutting it; `truncation_direction="left"` keeps a long text's end instead of its start.
        Equals `embed_ids(encode(texts, task=task), task=task, ...)`.
        """
        texts = validate_texts(texts)
        check_embed_args(normalize=normalize, truncate=truncate, dimensions=dimensions)
        check_dimensions(dimensions, self._dimension, self._matryoshka)
        plan = self._plan(task, len(texts))
        limit = self.max_input_tokens if truncate else None
        ids = self._encoder.encode(texts, plan.prefixes, max_length=limit, direction=truncation_direction, name="texts")
        self._encoder.check_lengths(ids, "texts")
        return postprocess(self._run(ids, plan), dimensions=dimensions, normalize=normalize)

    def embed_ids(
        self,
        ids: Sequence[Sequence[int]],
        *,
        task: str | Sequence[str | None] | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool = True,
        truncation_direction: str = "right",
    ) -> np.ndarray:
        """Embed pre-tokenised inputs -> float32 array (len(ids), dimensions or dimension), input order kept.

        Each entry is the model's whole input as `encode` gives it: special tokens (and the task's
        prompt, if any) included, since nothing is added here. `task` selects the adapter and the
        prompt tokens pooling leaves out, so `embed_ids(encode(texts, task=t), task=t) == embed(texts,
        task=t)`. A sequence longer than `max_input_tokens` is cut plainly (its trailing special token
        goes too, as TEI cuts raw ids), or refused with `truncate=False`. Raises InputError naming the
        entry for an empty list, a non-int, or an id outside the vocabulary (and its position).
        """
        check_embed_args(normalize=normalize, truncate=truncate, dimensions=dimensions)
        check_dimensions(dimensions, self._dimension, self._matryoshka)
        rows = self._encoder.check_id_lists(ids)
        plan = self._plan(task, len(rows))
        limit = self.max_input_tokens if truncate else None
        rows = self._encoder.encode(
            rows, [""] * len(rows), max_length=limit, direction=truncation_direction, name="inputs"
        )
        self._encoder.check_lengths(rows, "inputs")
        return postprocess(self._run(rows, plan), dimensions=dimensions, normalize=normalize)

    def token_batch(
        self, ids: Sequence[Sequence[int]], *, task: str | Sequence[str | None] | None = None
    ) -> TokenBatch:
        """One TokenBatch of model inputs (as `encode` gives them), rows in the given order, with each
        row's adapter and prompt length from `task` (one name, or one per row). The token budget is the
        caller's. InputError for a bad id list or a row longer than `max_input_tokens`."""
        rows = self._encoder.check_id_lists(ids)
        self._encoder.check_lengths(rows, "inputs")
        plan = self._plan(task, len(rows))
        return TokenBatch.from_ids(
            rows, adapter_ids=plan.adapter_ids, prompt_lengths=plan.prompt_lengths, pad_id=self._encoder.pad_id
        )

    @torch.inference_mode()
    def embed_token_batch(self, batch: TokenBatch) -> np.ndarray:
        """Raw pooled vectors, float32 [batch.size, dimension], in the batch's row order (`batch.indices`
        says where each row belongs): one forward pass, no normalisation or Matryoshka cut (see
        `embedder.postprocess`). Build the batch with `token_batch`."""
        return self._pooled(batch.to(self._device)).float().cpu().numpy()

    def encode(
        self,
        inputs: Sequence[str | Sequence[int]],
        *,
        task: str | Sequence[str | None] | None = None,
        max_length: int | None = None,
        truncation_direction: str = "right",
    ) -> list[list[int]]:
        """The token ids the model runs for each input (texts and token-id lists may be mixed).

        A text gets its task's prompt and the special tokens; past `max_length` its own tokens are cut
        and the special tokens kept (as the tokenizer truncates). A token-id list is taken as given: the
        caller includes the special tokens, as TEI expects; past `max_length` it is cut plainly. With a
        task that has a prompt, a token-id list is decoded without its special tokens and tokenized
        again behind the prompt, as TEI does. `max_length=None` cuts nothing (at most
        `max_input_tokens`; the caller checks lengths). Raises InputError naming the input for an empty
        or unencodable text, a bad id list (see `embed_ids`), or a `max_length` out of range.
        """
        if isinstance(inputs, str) or not isinstance(inputs, Sequence) or len(inputs) == 0:
            raise InputError("inputs must be a non-empty list of texts or token-id lists")
        items: list[str | list[int]] = [
            validate_text(item, index) if isinstance(item, str) else self._encoder.check_ids(item, index)
            for index, item in enumerate(inputs)
        ]
        prefixes = self._plan(task, len(items)).prefixes
        return self._encoder.encode(
            items, prefixes, max_length=max_length, direction=truncation_direction, name="inputs"
        )

    def embed_iter(
        self,
        texts: Iterable[str],
        *,
        task: str | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool = True,
        window: int = DEFAULT_STREAM_WINDOW,
    ) -> Iterator[np.ndarray]:
        """Embed a stream (any iterable, e.g. a generator over millions of texts) in constant memory.

        Texts are drawn `window` at a time, embedded as `embed` does (sorted and packed by token
        budget inside the window), and yielded as one float32 array per window, in input order;
        the caller's loop decides what stays in memory.
        """
        if task is not None and not isinstance(task, str):
            raise InputError("embed_iter takes one task name for the whole stream (or None)")
        check_dimensions(dimensions, self._dimension, self._matryoshka)
        for part in iter_windows(texts, window):
            yield self.embed(part, task=task, dimensions=dimensions, normalize=normalize, truncate=truncate)

    @torch.inference_mode()
    def embed_spans(
        self,
        text: str,
        spans: Sequence[tuple[int, int]],
        *,
        task: str | None = "document",
        dimensions: int | None = None,
        normalize: bool = True,
    ) -> np.ndarray:
        """Late chunking: one vector per character span of `text`, pooled from ONE pass over the document.

        The model reads the whole text (with the task's prompt); each span's vector is the mean of the
        token states inside it, so it carries the surrounding context. Beyond the model's limit the
        text is read in windows overlapping by a quarter, each token taking its state from the window
        where it has the most context on both sides (late.py). Mean-pooling models only.
        """
        late.check_request(text, self._pooling)
        check_embed_args(normalize=normalize, dimensions=dimensions)
        check_dimensions(dimensions, self._dimension, self._matryoshka)
        plan = self._plan(task, 1)

        def run(row: list[int]) -> np.ndarray:
            window = TokenBatch.from_ids([row], adapter_ids=plan.adapter_ids, pad_id=self._encoder.pad_id)
            return self._model(window.to(self._device)).float().cpu().numpy()  # [len(row), H]

        vectors = late.span_vectors(self._encoder, run, text, plan.prefixes[0], spans)
        if self._dense is not None:  # each span's pooled vector goes through the pipeline's projections
            vectors = self._dense(torch.from_numpy(vectors).to(self._device)).cpu().numpy()
        return postprocess(vectors, dimensions=dimensions, normalize=normalize)

    # -- bge-m3's sparse and multi-vector heads -------------------------------------------------

    @property
    def heads(self) -> M3Heads | None:
        """bge-m3's lexical (sparse_linear) and ColBERT (colbert_linear) heads, when the folder has them."""
        return self._heads

    def embed_all(
        self,
        texts: Sequence[str],
        *,
        task: str | Sequence[str | None] | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        truncate: bool = True,
        truncation_direction: str = "right",
    ) -> M3Embeddings:
        """ONE forward pass per batch -> the dense vectors (as `embed` gives them, same arguments), and the
        lexical weights and ColBERT multi-vectors of every head the model has (see embedkit.models.bge_m3).
        InputError as `embed`."""
        texts = validate_texts(texts)
        check_embed_args(normalize=normalize, truncate=truncate, dimensions=dimensions)
        check_dimensions(dimensions, self._dimension, self._matryoshka)
        heads = self._heads
        dense, lexical, multivector = self._run_heads(
            texts, task, truncate, truncation_direction,
            lexical=heads is not None and heads.sparse is not None,
            multivector=heads is not None and heads.colbert is not None,
        )  # fmt: skip
        return M3Embeddings(postprocess(dense, dimensions=dimensions, normalize=normalize), lexical, multivector)

    def embed_multivector(
        self,
        texts: Sequence[str],
        *,
        task: str | Sequence[str | None] | None = None,
        truncate: bool = True,
        truncation_direction: str = "right",
    ) -> list[np.ndarray]:
        """One float32 [n_tokens - 1, D] array of L2-normalised ColBERT vectors per text (every token but the
        first, the end token included), in input order: bge-m3's `colbert_linear` head. Compare with MaxSim
        (`embedkit.models.bge_m3.maxsim`, Qdrant's multivector comparator) or its mean form `colbert_score`.
        InputError for a model without the head, and as `embed`."""
        self._require_head("colbert")
        texts = validate_texts(texts)
        check_embed_args(normalize=True, truncate=truncate)
        _, _, vectors = self._run_heads(texts, task, truncate, truncation_direction, lexical=False, multivector=True)
        assert vectors is not None
        return vectors

    def embed_lexical(
        self,
        texts: Sequence[str],
        *,
        task: str | Sequence[str | None] | None = None,
        truncate: bool = True,
        truncation_direction: str = "right",
    ) -> list[dict[int, float]]:
        """bge-m3's lexical weights per text, in input order: {token id: weight > 0}, the max over repeated
        tokens, special tokens left out (`sparse_linear`; embedkit.sparse.bge_m3 makes SparseVectors of
        them). InputError for a model without the head, and as `embed`."""
        self._require_head("sparse")
        texts = validate_texts(texts)
        check_embed_args(normalize=True, truncate=truncate)
        _, weights, _ = self._run_heads(texts, task, truncate, truncation_direction, lexical=True, multivector=False)
        assert weights is not None
        return weights

    def _require_head(self, name: str) -> None:
        if self._heads is None or getattr(self._heads, name) is None:
            file = {"sparse": "sparse_linear.pt", "colbert": "colbert_linear.pt"}[name]
            raise InputError(f"{self._model_id} has no {name} head ({file} beside the weights, as bge-m3 ships it)")

    @torch.inference_mode()
    def _run_heads(
        self,
        texts: list[str],
        task: str | Sequence[str | None] | None,
        truncate: bool,
        direction: str,
        *,
        lexical: bool,
        multivector: bool,
    ) -> tuple[np.ndarray, list[dict[int, float]] | None, list[np.ndarray] | None]:
        """Raw pooled vectors, lexical weights and multi-vectors of `texts`, input order, one pass per batch."""
        plan = self._plan(task, len(texts))
        limit = self.max_input_tokens if truncate else None
        ids = self._encoder.encode(texts, plan.prefixes, max_length=limit, direction=direction, name="texts")
        self._encoder.check_lengths(ids, "texts")
        batches = pack(
            ids,
            batch_tokens=self.batch_tokens,
            max_batch_size=self.max_batch_size,
            adapter_ids=plan.adapter_ids,
            prompt_lengths=plan.prompt_lengths,
            pad_id=self._encoder.pad_id,
        )
        dense = np.empty((len(ids), self._dimension), dtype=np.float32)
        weights: list[dict[int, float]] = [{} for _ in ids]
        vectors: list[np.ndarray] = [np.empty(0) for _ in ids]
        for batch in batches:
            batch = batch.to(self._device)
            states = self._model(batch)  # [N, H]
            rows = list(batch.indices)
            dense[rows] = self._project(pool_packed(states, batch, self._pooling)).float().cpu().numpy()
            lengths = list(batch.lengths)
            if lexical:
                assert self._heads is not None
                for row, value in zip(rows, self._heads.lexical_weights(states, batch.input_ids, lengths), strict=True):
                    weights[row] = value
            if multivector:
                assert self._heads is not None
                for row, array in zip(rows, self._heads.multivectors(states, lengths), strict=True):
                    vectors[row] = array
        return dense, weights if lexical else None, vectors if multivector else None

    # -- tokens ---------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's fast tokenizer, without truncation or padding (what count_tokens and chunking use)."""
        return self._encoder.tokenizer

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Content tokens of each text, without special tokens or prompt, never truncated."""
        texts = [validate_text(text, index) for index, text in enumerate(texts)]
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def input_overhead(self, task: str | None = None) -> int:
        """Tokens a text costs beyond its own: special tokens plus the task's prompt."""
        return self._encoder.overhead(self._task_table.prefix(task))

    def tokenize(
        self, texts: Sequence[str], *, task: str | Sequence[str | None] | None = None, add_special_tokens: bool = True
    ) -> list[Encoding]:
        """The model's tokens for each text with its task's prompt prepended, never truncated.

        `len(result[i].ids)` is what text i costs in a forward pass before truncation.
        """
        texts = validate_texts(texts)
        plan = self._plan(task, len(texts))
        inputs = [prefix + text for prefix, text in zip(plan.prefixes, texts, strict=True)]
        if self._encoder.lower_case:
            inputs = [text.lower() for text in inputs]
        return self.tokenizer.encode_batch(inputs, add_special_tokens=add_special_tokens)

    # -- tasks ----------------------------------------------------------------------------------

    @property
    def _merged_adapter_name(self) -> str | None:
        merged = self._model.merged_adapter
        return None if merged is None else self._task_table.adapters[merged]

    def _plan(self, task: str | Sequence[str | None] | None, count: int) -> TextPlan:
        merged = self._merged_adapter_name
        return plan_tasks(task, count, self._task_table, self._encoder, default_task=self.default_task, merged=merged)

    # -- forward --------------------------------------------------------------------------------

    @torch.inference_mode()
    def _run(self, ids: Sequence[Sequence[int]], plan: TextPlan) -> np.ndarray:
        """Pooled raw vectors of the model's input ids (specials and prompt included), input order kept."""
        batches = pack(
            ids,
            batch_tokens=self.batch_tokens,
            max_batch_size=self.max_batch_size,
            adapter_ids=plan.adapter_ids,
            prompt_lengths=plan.prompt_lengths,
            pad_id=self._encoder.pad_id,
        )
        pooled = [self._pooled(batch.to(self._device)) for batch in batches]
        vectors = torch.cat(pooled).float().cpu().numpy()  # the loop's one sync
        order = np.fromiter((i for batch in batches for i in batch.indices), dtype=np.int64, count=len(ids))
        restored = np.empty_like(vectors)
        restored[order] = vectors
        return restored

    def _pooled(self, batch: TokenBatch) -> torch.Tensor:
        """[B, dimension] pooled states of a batch already on the device, rows in batch order, through the
        pipeline's Dense modules when it has any."""
        if isinstance(self._model, OnnxModel):  # its graph pools and projects: no per-token work here
            return self._model.sentence_embeddings(batch)
        return self._project(pool_packed(self._model(batch), batch, self._pooling))  # states [N, H]

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled vectors [B, H * modes] through the pipeline's Dense modules, when it has any."""
        return pooled if self._dense is None else self._dense(pooled)
