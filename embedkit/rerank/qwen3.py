"""Qwen3-Reranker: a Qwen3 causal LM asked whether a document meets a query, scored by "yes" against "no".

The published usage (Qwen/Qwen3-Reranker-0.6B/4B/8B model cards, `format_instruction`, `process_inputs`,
`compute_logits`) builds, per (query, document) pair, the chat prompt

    <|im_start|>system\\n{SYSTEM_PROMPT}<|im_end|>\\n<|im_start|>user\\n                 (PREFIX)
    <Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {document}              (the pair text)
    <|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n                      (SUFFIX)

tokenising PREFIX and SUFFIX alone (no special tokens added) and the pair text with the tokenizer's own
special tokens, truncated from the right so that the whole prompt fits `max_length` = 8192 tokens. The model
runs causally and the score is read at the last position:

    p = softmax([logit("no"), logit("yes")])[1] = sigmoid(logit("yes") - logit("no"))

with "yes" / "no" the ids the tokenizer gives those strings as single tokens. `raw_scores=True` returns
logit("yes") - logit("no"), the log-odds: the value before the activation, as a cross-encoder's raw score
is its logit before the sigmoid (sigmoid(raw) == score).

Three departures in how, not what:
- Only the head's two rows ("no", "yes") are kept and multiplied, at each pair's last position; the model
  card's code projects every position onto the whole vocabulary (151,669 rows) and keeps two numbers.
- Rows are right-padded (or packed, on CUDA) instead of left-padded. Attention is causal, so a real token
  never sees padding either way, and positions start at 0 per row; the card's left padding shifts a short
  row's positions by its padding, which RoPE, depending only on position differences, leaves unchanged
  (up to rounding).
- Truncation cuts the document only: the instruction and the query are kept whole (InputError when they
  alone do not fit). While the cut falls inside the document, which ends the pair text, the tokens are the
  card's exactly (it truncates the pair text's tokens from the right).

Detection reads config.json and the tensor names, never the folder's name: `architectures` naming
Qwen3ForCausalLM, and the decoder under `model.` with an `lm_head.weight` (or tied embeddings). Qwen3-Embedding
(a bare Qwen3Model: unprefixed tensors, no head) is an embedder, refused here with ModelLoadError.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from embedkit.embedder import check_encodable
from embedkit.errors import InputError, ModelLoadError
from embedkit.hub import resolve_model_dir
from embedkit.local.batching import DEFAULT_BATCH_TOKENS, DEFAULT_CPU_BATCH_TOKENS, DEFAULT_MAX_BATCH_SIZE, pack
from embedkit.local.loader import check_vocabulary, resolve_device, resolve_dtype
from embedkit.local.tokenizer import load_model_tokenizer, plain_copy
from embedkit.models import qwen
from embedkit.models.loading import assign_weights
from embedkit.models.st_files import read_json
from embedkit.rerank.base import RerankResult, order_results
from embedkit.rerank.inputs import check_pairs, rerank_pairs
from embedkit.weights import load_state_dict, tensor_shapes, weights_digest

__all__ = [
    "DEFAULT_INSTRUCTION",
    "DEFAULT_MAX_LENGTH",
    "PREFIX",
    "SUFFIX",
    "SYSTEM_PROMPT",
    "Qwen3Reranker",
    "format_pair",
    "is_qwen3_reranker",
    "is_qwen3_reranker_dir",
    "load_qwen3_reranker",
]

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
PREFIX = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
DEFAULT_MAX_LENGTH = 8192  # the model cards' max_length (prompt included)
ANSWER_TOKENS = ("no", "yes")  # the head's rows kept, in this order: softmax over them, index 1 = P(yes)
ARCHITECTURE = "Qwen3ForCausalLM"


def format_pair(instruction: str, query: str, document: str) -> str:
    """The user turn between PREFIX and SUFFIX, as the model cards' `format_instruction` writes it."""
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


def _head_chars(instruction: str, query: str) -> int:
    # the pair text's characters before the document's own: "<Instruct>: ...\n<Query>: ...\n<Document>:"
    return len(format_pair(instruction, query, "")) - 1  # the space after "<Document>:" joins the document's token


def is_qwen3_reranker(config: dict[str, Any], tensor_names: set[str]) -> bool:
    """True when config.json names Qwen3ForCausalLM and the tensors are a causal LM's: the decoder under
    `model.` and an `lm_head.weight`, or tied embeddings. A Qwen3-Embedding folder (unprefixed decoder, no
    head) is False, whatever its `architectures` say (Qwen3-Embedding's config.json names Qwen3ForCausalLM)."""
    return _refusal(config, tensor_names) is None


def is_qwen3_reranker_dir(model_dir: Path) -> bool:
    """`is_qwen3_reranker` on a folder's config.json and safetensors headers; False when either is missing."""
    path = model_dir / "config.json"
    if not path.is_file():
        return False
    config = read_json(path)
    if not isinstance(config, dict) or config.get("model_type") != "qwen3":
        return False  # cheap: no weights header read for other families
    try:
        names = set(tensor_shapes(model_dir))
    except ModelLoadError:
        return False
    return is_qwen3_reranker(config, names)


def _refusal(config: dict[str, Any], tensor_names: set[str]) -> str | None:
    """Why the checkpoint is not a Qwen3-Reranker, or None when it is."""
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or ARCHITECTURE not in architectures:
        return f"config.json's architectures are {architectures!r}, not [{ARCHITECTURE!r}]"
    if config.get("model_type") != "qwen3":
        return f"config.json's model_type is {config.get('model_type')!r}, not 'qwen3'"
    if "model.layers.0.self_attn.q_proj.weight" not in tensor_names:
        if "layers.0.self_attn.q_proj.weight" in tensor_names:
            return (
                "the weights are a bare Qwen3 decoder (unprefixed tensors, no lm_head), as Qwen3-Embedding saves "
                "it: an embedding model (load it with embedkit.load), not a reranker"
            )
        return "the weights hold no Qwen3 decoder under `model.` (model.layers.0.self_attn.q_proj.weight)"
    if "lm_head.weight" not in tensor_names and config.get("tie_word_embeddings") is not True:
        return "the weights have no lm_head.weight and config.json's tie_word_embeddings is not true"
    return None


class Qwen3Reranker:
    """A loaded Qwen3-Reranker (see the module docstring); satisfies `embedkit.rerank.base.Reranker`.

    `score` and `rerank` take `instruction=` per call (default: the one given at load, else
    DEFAULT_INSTRUCTION); it is plain text inside the prompt, so changing it costs nothing.
    """

    def __init__(
        self,
        *,
        model_id: str,
        decoder: qwen.Qwen,
        answer_rows: torch.Tensor,
        answer_ids: tuple[int, int],
        tokenizer: Tokenizer,
        max_length: int,
        instruction: str,
        device: torch.device,
        batch_tokens: int,
        max_batch_size: int,
        digest: str,
    ) -> None:
        self._model_id = model_id
        self.decoder = decoder
        self.answer_rows = answer_rows  # [2, H] the head's rows for ("no", "yes"), on the model's device and dtype
        self.answer_ids = answer_ids
        self.tokenizer = tokenizer  # neither pads nor truncates
        self.max_length = max_length
        self.instruction = instruction
        self.device = device
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.digest = digest
        self.prefix_ids = tokenizer.encode(PREFIX, add_special_tokens=False).ids
        self.suffix_ids = tokenizer.encode(SUFFIX, add_special_tokens=False).ids
        # what the tokenizer's post-processor puts around one sequence (the card tokenises the pair text with
        # add_special_tokens=True); nothing for Qwen3-Reranker's tokenizer.json, <|endoftext|> after it for one
        # that appends end-of-text as Qwen3-Embedding's does
        plain = tokenizer.encode("a", add_special_tokens=False).ids
        full = tokenizer.encode("a").ids
        start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0)
        self.before_ids, self.after_ids = full[:start], full[start + len(plain) :]
        self._overhead = len(self.prefix_ids) + len(self.suffix_ids) + len(self.before_ids) + len(self.after_ids)
        if self._overhead >= max_length:
            raise InputError(f"max_length={max_length} leaves no room after the prompt's {self._overhead} tokens")
        self._truncated = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Qwen3Reranker({self._model_id!r}, device={self.device}, dtype={self.answer_rows.dtype}, "
            f"max_input_tokens={self.max_length})"
        )

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def max_input_tokens(self) -> int:
        """The longest prompt (template + instruction + query + document) the model reads, in tokens."""
        return self.max_length

    @property
    def truncated_count(self) -> int:
        return self._truncated

    # -- tokens ---------------------------------------------------------------------------------

    def encode_pairs(
        self, pairs: Sequence[tuple[str, str]], instruction: str, *, truncate: bool = True
    ) -> tuple[list[list[int]], int]:
        """The prompt's token ids per pair and how many pairs had their document cut.

        InputError naming the pair when the instruction and query alone exceed `max_input_tokens`, or when
        a document does not fit and `truncate` is False.
        """
        texts = [format_pair(instruction, query, document) for query, document in pairs]
        budget = self.max_length - self._overhead  # tokens left for the pair text
        rows, cut = [], 0
        for index, ((query, _), encoding) in enumerate(
            zip(pairs, self.tokenizer.encode_batch(texts, add_special_tokens=False), strict=True)
        ):
            ids = encoding.ids
            if len(ids) > budget:
                # tokens starting before the document belong to the instruction and query: kept whole
                starts = [start for start, _ in encoding.offsets]
                kept = bisect.bisect_left(starts, _head_chars(instruction, query))
                if kept > budget:
                    raise InputError(
                        f"pairs[{index}]: the instruction and query take {kept + self._overhead} tokens with the "
                        f"prompt, past max_input_tokens={self.max_length}; only the document is truncated",
                        index=index,
                    )
                if not truncate:
                    raise InputError(
                        f"pairs[{index}] is {len(ids) + self._overhead} tokens with the prompt, past "
                        f"max_input_tokens={self.max_length}, and truncate=False",
                        index=index,
                    )
                ids, cut = ids[:budget], cut + 1
            rows.append(self.prefix_ids + self.before_ids + ids + self.after_ids + self.suffix_ids)
        return rows, cut

    # -- scores ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def answer_logits(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """[B, 2] float32 on the CPU: logits of ("no", "yes") at each row's last token, in input order."""
        out = torch.empty((len(rows), 2), dtype=torch.float32)
        pad_id = self.prefix_ids[0] if self.prefix_ids else 0  # never read: padding is masked or absent
        for batch in pack(rows, batch_tokens=self.batch_tokens, max_batch_size=self.max_batch_size, pad_id=pad_id):
            batch = batch.to(self.device)
            states = self.decoder(batch)  # [N, H] real tokens, packed
            last = states[batch.cu_seqlens[1:].long() - 1]  # [B, H] each row's last token
            # the head on two rows only, in the model's dtype as the card's lm_head runs
            logits = last @ self.answer_rows.T  # [B, 2]
            out[list(batch.indices)] = logits.float().cpu()
        return out

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        raw_scores: bool = False,
        truncate: bool = True,
        instruction: str | None = None,
    ) -> list[float]:
        """P("yes") per (query, document) pair, in input order; `raw_scores=True`: logit("yes") - logit("no").

        InputError for an empty pair list, a pair that is not two strings, an empty query, or a
        pair too long (see `encode_pairs`).
        """
        checked = check_pairs(pairs)
        rows, cut = self.encode_pairs(checked, self._instruction(instruction), truncate=truncate)
        if cut:
            with self._lock:
                self._truncated += cut
            log.warning(
                "%s: %d of %d documents truncated to fit %d tokens", self._model_id, cut, len(rows), self.max_length
            )
        logits = self.answer_logits(rows)  # [B, 2] (no, yes)
        if raw_scores:
            return (logits[:, 1] - logits[:, 0]).tolist()
        return torch.softmax(logits, dim=-1)[:, 1].tolist()

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int | None = None,
        return_documents: bool = False,
        raw_scores: bool = False,
        truncate: bool = True,
        instruction: str | None = None,
    ) -> list[RerankResult]:
        """`documents` ordered by P("yes"), best first, at most `top_k`. InputError for an empty query, an
        empty document list, or `top_k < 1` (an empty document is scored)."""
        pairs = rerank_pairs(query, documents, top_k)
        scores = self.score(pairs, raw_scores=raw_scores, truncate=truncate, instruction=instruction)
        return order_results(scores, documents, top_k=top_k, return_documents=return_documents)

    def fingerprint(self) -> dict[str, Any]:
        """What decides the scores: weights, template, instruction, the answer tokens and the activation."""
        return {
            "kind": "qwen3-reranker",
            "model_id": self._model_id,
            "weights_digest": self.digest,
            "template": PREFIX + format_pair("{instruction}", "{query}", "{document}") + SUFFIX,
            "instruction": self.instruction,
            "answer_tokens": dict(zip(ANSWER_TOKENS, self.answer_ids, strict=True)),
            "activation": "softmax over (no, yes) logits at the last token -> P(yes)",
            "max_input_tokens": self.max_length,
        }

    def _instruction(self, instruction: str | None) -> str:
        if instruction is None:
            return self.instruction
        if not isinstance(instruction, str):
            raise InputError(f"instruction is {type(instruction).__name__}, expected str")
        check_encodable(instruction, "instruction")
        return instruction


def _answer_ids(tokenizer: Tokenizer, source: Path) -> tuple[int, int]:
    """The ids of "no" and "yes" as single tokens (the card's `convert_tokens_to_ids`)."""
    ids = []
    for token in ANSWER_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise ModelLoadError(f"{source}: the tokenizer has no {token!r} token, which Qwen3-Reranker scores")
        ids.append(token_id)
    return ids[0], ids[1]


def load_qwen3_reranker(
    model: str | os.PathLike[str],
    *,
    instruction: str | None = None,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    batch_tokens: int | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Qwen3Reranker:
    """A Qwen3-Reranker checkpoint (folder or hub id, transformers' Qwen3ForCausalLM layout) on embedkit's Qwen.

    `instruction` replaces DEFAULT_INSTRUCTION for every call that gives none. `max_length` (tokens, prompt
    included) lowers the model card's 8192; it cannot pass config.json's max_position_embeddings. `device`
    and `dtype` as in `embedkit.load`; `batch_tokens` is the padded-token budget of one forward pass (default
    2048 on the CPU, 16384 elsewhere). ModelLoadError, naming the folder and the reason, for a folder that
    is not a Qwen3-Reranker (e.g. a Qwen3-Embedding folder), a missing file or mismatched weights.
    """
    model_dir, model_id = resolve_model_dir(model, revision=revision, cache_dir=cache_dir)
    config = read_json(model_dir / "config.json")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{model_dir}/config.json: expected a JSON object")
    tensor_names = set(tensor_shapes(model_dir))
    why = _refusal(config, tensor_names)
    if why is not None:
        raise ModelLoadError(f"{model_dir}: not a Qwen3-Reranker checkpoint: {why}")
    instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
    if not isinstance(instruction, str):
        raise InputError(f"instruction is {type(instruction).__name__}, expected str")
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    if batch_tokens is None:
        batch_tokens = DEFAULT_CPU_BATCH_TOKENS if torch_device.type == "cpu" else DEFAULT_BATCH_TOKENS
    for name, value in (("batch_tokens", batch_tokens), ("max_batch_size", max_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name}={value!r}: expected a positive int")

    with torch.device("meta"):
        module, layout = qwen.causal_lm(config, tensor_names, str(model_dir))
    assign_weights(module, load_state_dict(model_dir), layout, str(model_dir))
    tokenizer, tokenizer_file = load_model_tokenizer(model_dir)
    tokenizer = plain_copy(tokenizer)
    check_vocabulary(tokenizer, module.model, tokenizer_file)
    answer_ids = _answer_ids(tokenizer, tokenizer_file)
    # only the two rows are kept; the full head (vocabulary x H) is dropped with `module`
    answer_rows = module.head_rows(list(answer_ids)).to(device=torch_device, dtype=torch_dtype)
    decoder = module.model.to(device=torch_device, dtype=torch_dtype).eval()
    if not decoder.causal:
        raise ModelLoadError(f"{model_dir}/config.json: Qwen3-Reranker runs causally, but the config asks otherwise")

    limit = min(DEFAULT_MAX_LENGTH, decoder.max_positions)
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not 0 < max_length <= limit:
            raise InputError(f"max_length={max_length!r}: expected an int from 1 to this model's limit of {limit}")
        limit = max_length
    reranker = Qwen3Reranker(
        model_id=model_id,
        decoder=decoder,
        answer_rows=answer_rows,
        answer_ids=answer_ids,
        tokenizer=tokenizer,
        max_length=limit,
        instruction=instruction,
        device=torch_device,
        batch_tokens=batch_tokens,
        max_batch_size=max_batch_size,
        digest=weights_digest(model_dir),
    )
    log.info("%s: %r", model_dir, reranker)
    return reranker
