"""Cross-encoder rerankers: sequence-classification checkpoints, as sentence-transformers' CrossEncoder saves
them, on embedkit's own encoders.

A cross-encoder reads the query and a document as one pair, `[CLS] query [SEP] document [SEP]` for BERT
(token types 0 then 1) or `<s> query </s></s> document </s>` for XLM-RoBERTa, and scores the pair from
the first token's state through its classification head (embedkit/models/classifier.py). The score is
the logit after the activation the model records, as sentence-transformers' `CrossEncoder.predict`
applies it, first found of:

- config_sentence_transformers.json `activation_fn` (sentence-transformers >= 5 writes it there),
- config.json `sentence_transformers.activation_fn` (sentence-transformers 4),
- config.json `sbert_ce_default_activation_function` (sentence-transformers < 4),
- else Sigmoid for one label, identity for more (CrossEncoder.get_default_activation_fn).

sentence-transformers instantiates a recorded path only under `torch.` (others need trust_remote_code and
fall back to the default, with a warning); embedkit does the same and knows Sigmoid, Identity and Tanh.

Differences from sentence-transformers, in how, not what (scores agree within 1e-5 in fp32, tests/rerank):
- Truncation cuts the document only; the query is kept whole (a query that alone fills the model's input
  is an InputError). sentence-transformers lets the tokenizer's `longest_first` strategy cut the longer of
  the two, which is the document whenever the document is the longer one, as in retrieval.
- Pairs are batched by a padded-token budget, longest first (local/batching.py), instead of 32 at a time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Encoding, Tokenizer

from embedkit.errors import InputError, ModelLoadError
from embedkit.hub import resolve_model_dir
from embedkit.local.batching import DEFAULT_MAX_BATCH_SIZE, TokenBatch, pack
from embedkit.local.loader import check_vocabulary, resolve_device, resolve_dtype
from embedkit.local.tokenizer import load_model_tokenizer, plain_copy
from embedkit.models.classifier import SequenceClassifier
from embedkit.models.loading import assign_weights
from embedkit.models.registry import FAMILIES, detect_family
from embedkit.rerank.base import RerankResult, order_results
from embedkit.rerank.folders import cross_encoder_reason, read_object
from embedkit.rerank.inputs import check_pairs, rerank_pairs
from embedkit.weights import load_state_dict, tensor_shapes, weights_digest

__all__ = [
    "ACTIVATIONS",
    "CrossEncoderReranker",
    "PairRunner",
    "TorchPairRunner",
    "load_cross_encoder",
    "read_activation",
]

log = logging.getLogger(__name__)

# on a CPU a pass's activations must stay in cache, however long each pair is: MiniLM-L6 cross-encoder,
# 100 pairs of 100-300 tokens, quiet 2-core AVX-512 machine (pairs/s, torch / ONNX fp32): 1024 tokens
# 31.1 / 26.0, 2048 28.4 / 23.2, 4096 29.3 / 19.7, 8192 22.1 / 17.9 (benchmarks/RESULTS.md)
DEFAULT_CPU_PAIR_TOKENS = 1024
DEFAULT_GPU_PAIR_TOKENS = 16384

# the activations embedkit applies, by the class name sentence-transformers records (under `torch.`)
ACTIVATIONS = {
    "Sigmoid": torch.sigmoid,
    "Identity": lambda logits: logits,
    "Tanh": torch.tanh,
}


def _activation_name(path: str, where: str) -> str | None:
    """The activation's class name for a recorded dotted path; None (with a warning) when sentence-transformers
    itself would not load it without trust_remote_code, ModelLoadError for a torch class embedkit lacks."""
    if not path.startswith("torch."):
        log.warning(
            "%s: activation %r is not a torch class; sentence-transformers ignores it without trust_remote_code, "
            "and so does embedkit: the default activation applies",
            where,
            path,
        )
        return None
    name = path.rsplit(".", 1)[-1]
    if name not in ACTIVATIONS:
        raise ModelLoadError(f"{where}: activation {path!r} is not one embedkit applies ({', '.join(ACTIVATIONS)})")
    return name


def read_activation(model_dir: Path, config: dict[str, Any], labels: int) -> str:
    """The activation sentence-transformers' CrossEncoder applies to this model's logits (module docstring)."""
    recorded: list[tuple[Any, str]] = [
        (
            read_object(model_dir / "config_sentence_transformers.json").get("activation_fn"),
            "config_sentence_transformers.json activation_fn",
        ),
    ]
    st_block = config.get("sentence_transformers")
    if isinstance(st_block, dict) and "activation_fn" in st_block:
        recorded.append((st_block.get("activation_fn"), "config.json sentence_transformers.activation_fn"))
    elif config.get("sbert_ce_default_activation_function") is not None:
        recorded.append(
            (config["sbert_ce_default_activation_function"], "config.json sbert_ce_default_activation_function")
        )
    for value, where in recorded:
        if isinstance(value, str) and value:
            name = _activation_name(value, f"{model_dir}: {where}")
            if name is not None:
                return name
    return "Sigmoid" if labels == 1 else "Identity"


@dataclass(frozen=True)
class PairIds:
    """Tokenised pairs: per pair its ids and token types (0: the query's segment, 1: the document's)."""

    ids: list[list[int]]
    types: list[list[int]]


@dataclass(frozen=True)
class PairNames:
    """How errors name a pair and its query: the caller's `pairs`, or `rerank`'s query and documents."""

    rerank: bool = False

    def pair(self, index: int) -> str:
        return f"documents[{index}] with the query" if self.rerank else f"pairs[{index}]"

    def query(self, index: int) -> str:
        return "query" if self.rerank else f"pairs[{index}]'s query"


class PairRunner:
    """Token batches of pairs -> logits [B, L] (float32, CPU): what the torch and ONNX engines both do."""

    labels: int
    backend: str

    def logits(self, batch: TokenBatch, types: torch.Tensor) -> torch.Tensor:
        """`batch` (right-padded on the way in) and its per-token types [N], packed as batch.input_ids -> [B, L]."""
        raise NotImplementedError


class TorchPairRunner(PairRunner):
    """The classifier module in torch, over the padded view of each batch."""

    backend = "torch"

    def __init__(self, module: SequenceClassifier, device: torch.device) -> None:
        self.module = module
        self.device = device
        self.labels = module.labels

    @torch.inference_mode()
    def logits(self, batch: TokenBatch, types: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device)
        view = batch.padded()
        padded_types = torch.zeros_like(view.input_ids)
        padded_types[view.attention_mask] = types.to(self.device)
        logits = self.module.forward_padded(view.input_ids, view.attention_mask, view.position_ids, padded_types)
        # sentence-transformers upcasts sub-float32 logits before its activation, to break ties
        return logits.float().cpu()


class CrossEncoderReranker:
    """A cross-encoder as an `embedkit.rerank.Reranker`. Build it with `embedkit.load_reranker`.

    `score` and `rerank` need a single-label model (a relevance logit); `predict` gives every label's score,
    [pairs][labels], for any model (as sentence-transformers' `CrossEncoder.predict`).
    """

    def __init__(
        self,
        *,
        model_id: str,
        family: str,
        runner: PairRunner,
        tokenizer: Tokenizer,
        max_input_tokens: int,
        activation: str,
        batch_tokens: int,
        digest: str,
        pad_id: int,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    ) -> None:
        self._model_id = model_id
        self.family = family
        self.runner = runner
        self.tokenizer = plain_copy(tokenizer)
        self._max_input_tokens = max_input_tokens
        self.activation = activation
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.weights_digest = digest
        self.pad_id = pad_id
        self._truncated = 0
        processor = self.tokenizer.post_processor
        self.pair_special_tokens = processor.num_special_tokens_to_add(True) if processor is not None else 0

    def __repr__(self) -> str:
        return (
            f"CrossEncoderReranker(model_id={self._model_id!r}, family={self.family!r}, backend={self.backend!r}, "
            f"labels={self.num_labels}, activation={self.activation!r}, max_input_tokens={self._max_input_tokens})"
        )

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def max_input_tokens(self) -> int:
        return self._max_input_tokens

    @property
    def truncated_count(self) -> int:
        return self._truncated

    @property
    def num_labels(self) -> int:
        return self.runner.labels

    @property
    def backend(self) -> str:
        """ "torch" or "onnx"."""
        return self.runner.backend

    # -- inputs ---------------------------------------------------------------------------------

    def _cut(
        self, encoding: Encoding, index: int, truncate: bool, direction: str, names: PairNames
    ) -> tuple[list[int], list[int]]:
        """The pair's ids and types within `max_input_tokens`: document tokens dropped from `direction`."""
        ids, types = encoding.ids, encoding.type_ids
        excess = len(ids) - self._max_input_tokens
        if excess <= 0:
            return ids, types
        document = [position for position, sequence in enumerate(encoding.sequence_ids) if sequence == 1]
        if not truncate:
            raise InputError(
                f"{names.pair(index)} is {len(ids)} tokens long, over this model's limit of {self._max_input_tokens}; "
                "shorten the document or pass truncate=True",
                index=index,
            )
        if excess >= len(document):
            query_tokens = sum(1 for sequence in encoding.sequence_ids if sequence == 0)
            raise InputError(
                f"{names.query(index)} is {query_tokens} tokens long: with the pair's "
                f"{self.pair_special_tokens} special tokens it leaves no room for the document within this "
                f"model's limit of {self._max_input_tokens} tokens; shorten the query",
                index=index,
            )
        dropped = set(document[-excess:] if direction == "right" else document[:excess])
        keep = [position for position in range(len(ids)) if position not in dropped]
        return [ids[p] for p in keep], [types[p] for p in keep]

    def _encode(self, pairs: list[tuple[str, str]], truncate: bool, direction: str, names: PairNames) -> PairIds:
        if not isinstance(direction, str) or direction.lower() not in ("right", "left"):
            raise InputError(f"truncation_direction={direction!r}; use 'right' or 'left'")
        ids: list[list[int]] = []
        types: list[list[int]] = []
        cut = 0
        for index, encoding in enumerate(self.tokenizer.encode_batch(pairs)):
            row, row_types = self._cut(encoding, index, truncate, direction.lower(), names)
            cut += len(row) < len(encoding.ids)
            ids.append(row)
            types.append(row_types)
        if cut:
            self._truncated += cut
            log.warning(
                "%d of %d pairs had their document cut to fit %d tokens", cut, len(pairs), self._max_input_tokens
            )
        return PairIds(ids, types)

    # -- scoring --------------------------------------------------------------------------------

    def _logits(
        self, pairs: Sequence[tuple[str, str]], truncate: bool, direction: str, names: PairNames | None = None
    ) -> torch.Tensor:
        """[P, L] float32 logits in input order."""
        encoded = self._encode(check_pairs(pairs), truncate, direction, names or PairNames())
        out = torch.empty((len(encoded.ids), self.num_labels), dtype=torch.float32)
        batches = pack(
            encoded.ids, batch_tokens=self.batch_tokens, max_batch_size=self.max_batch_size, pad_id=self.pad_id
        )
        for batch in batches:
            types = torch.tensor([t for i in batch.indices for t in encoded.types[i]], dtype=torch.int64)
            out[list(batch.indices)] = self.runner.logits(batch, types)
        return out

    def _activate(self, logits: torch.Tensor, raw_scores: bool) -> torch.Tensor:
        return logits if raw_scores else ACTIVATIONS[self.activation](logits)

    def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        raw_scores: bool = False,
        truncate: bool = True,
        truncation_direction: str = "right",
    ) -> list[list[float]]:
        """Every label's score per pair, [P][L], after the model's activation unless `raw_scores`."""
        return self._activate(self._logits(pairs, truncate, truncation_direction), raw_scores).tolist()

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        raw_scores: bool = False,
        truncate: bool = True,
        truncation_direction: str = "right",
    ) -> list[float]:
        """One relevance score per (query, document) pair, in input order (the `Reranker` contract).

        `truncation_direction` ("right" or "left") is the end of the document that is cut. InputError for an
        empty pair list, an empty query, a non-str, a pair over the limit with `truncate=False`, a query
        that leaves the document no room, or a model with more than one label (use `predict`).
        """
        self._check_single_label()
        return self._activate(self._logits(pairs, truncate, truncation_direction), raw_scores)[:, 0].tolist()

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int | None = None,
        return_documents: bool = False,
        raw_scores: bool = False,
        truncate: bool = True,
        truncation_direction: str = "right",
    ) -> list[RerankResult]:
        """`documents` ordered by relevance to `query`, best first (ties in input order), at most `top_k`.

        InputError for an empty or non-str query, an empty document list, a non-str document, or `top_k < 1`.
        """
        pairs = rerank_pairs(query, documents, top_k)
        self._check_single_label()
        logits = self._logits(pairs, truncate, truncation_direction, PairNames(rerank=True))
        scores = self._activate(logits, raw_scores)[:, 0].tolist()
        return order_results(scores, documents, top_k=top_k, return_documents=return_documents)

    def _check_single_label(self) -> None:
        if self.num_labels != 1:
            raise InputError(
                f"{self._model_id} has {self.num_labels} labels; reranking needs one relevance score per pair "
                "(use predict() for every label's score)"
            )

    def fingerprint(self) -> dict[str, Any]:
        """What decides the scores."""
        return {
            "kind": "cross-encoder",
            "model_id": self._model_id,
            "family": self.family,
            "weights_digest": self.weights_digest,
            "activation": self.activation,
            "num_labels": self.num_labels,
            "max_input_tokens": self._max_input_tokens,
        }


def _max_input_tokens(model_dir: Path, module: SequenceClassifier, max_length: int | None) -> int:
    """sentence_bert_config.json's max_seq_length if set, else the smaller of the model's positions and the
    tokenizer's model_max_length (sentence-transformers' CrossEncoder truncates at the latter)."""
    encoder = module.pair_encoder
    positions = encoder.max_positions
    recorded = read_object(model_dir / "sentence_bert_config.json").get("max_seq_length")
    declared = read_object(model_dir / "tokenizer_config.json").get("model_max_length")
    limit = positions
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > 0:
        if recorded > positions and encoder.learned_positions:
            raise ModelLoadError(
                f"{model_dir / 'sentence_bert_config.json'}: max_seq_length {recorded} exceeds the model's "
                f"{positions} positions"
            )
        limit = recorded
    elif isinstance(declared, int) and 0 < declared < positions:
        limit = declared
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not 3 < max_length <= limit:
            raise InputError(f"max_length={max_length!r}: expected an int from 4 to this model's limit of {limit}")
        limit = max_length
    return limit


def load_cross_encoder(
    model: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    backend: str | None = None,
    quantize: str | None = None,
    batch_tokens: int | None = None,
    max_length: int | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    onnx_cache_dir: str | os.PathLike[str] | None = None,
) -> CrossEncoderReranker:
    """A cross-encoder (folder or hub id; see `embedkit.load_reranker` for the arguments)."""
    model_dir, model_id = resolve_model_dir(model, revision=revision, cache_dir=cache_dir)
    config = read_object(model_dir / "config.json")
    if not config:
        raise ModelLoadError(f"{model_dir / 'config.json'}: expected a JSON object")
    if cross_encoder_reason(model_dir) is None:
        raise ModelLoadError(
            f"{model_dir}: not a cross-encoder (config.json names no *ForSequenceClassification architecture and "
            "no sentence-transformers file says CrossEncoder); for an embedding model use embedkit.load"
        )
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    from embedkit.local.backends import choose_backend

    chosen, required = choose_backend(backend, quantize, torch_device, torch_dtype)
    if batch_tokens is None:
        batch_tokens = DEFAULT_CPU_PAIR_TOKENS if torch_device.type == "cpu" else DEFAULT_GPU_PAIR_TOKENS
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise InputError(f"batch_tokens={batch_tokens!r}: expected a positive int")
    tensor_names = set(tensor_shapes(model_dir))
    detection = detect_family(config, tensor_names, str(model_dir))
    family = detection.family
    if family.sequence_classifier is None:
        readable = ", ".join(name for name, entry in FAMILIES.items() if entry.sequence_classifier is not None)
        raise ModelLoadError(
            f"{model_dir}: embedkit has no sequence-classification head for the {family.name} family; "
            f"cross-encoders run on: {readable}"
        )
    with torch.device("meta"):
        module, layout = family.sequence_classifier(config, tensor_names, str(model_dir))
    if not isinstance(module, SequenceClassifier):
        raise ModelLoadError(f"{model_dir}: the {family.name} family's sequence_classifier hook gave no classifier")
    assign_weights(module, load_state_dict(model_dir), layout, str(model_dir))
    module = module.to(device=torch_device, dtype=torch_dtype).eval()
    tokenizer, tokenizer_file = load_model_tokenizer(model_dir)
    check_vocabulary(tokenizer, module.encoder, tokenizer_file)  # type: ignore[arg-type]
    limit = _max_input_tokens(model_dir, module, max_length)
    activation = read_activation(model_dir, config, module.labels)
    runner: PairRunner = TorchPairRunner(module, torch_device)
    if chosen == "onnx":
        from embedkit.rerank.onnx_runner import onnx_pair_runner

        runner = onnx_pair_runner(
            module, family.name, model_dir, quantize, onnx_cache_dir, required=required, fallback=runner
        )
    pad_id = tokenizer.padding["pad_id"] if tokenizer.padding else int(config.get("pad_token_id") or 0)
    reranker = CrossEncoderReranker(
        model_id=model_id,
        family=family.name,
        runner=runner,
        tokenizer=tokenizer,
        max_input_tokens=limit,
        activation=activation,
        batch_tokens=batch_tokens,
        digest=weights_digest(model_dir),
        pad_id=pad_id,
    )
    log.info("%s: %r (%s)", model_dir, reranker, "; ".join(detection.reasons))
    return reranker
