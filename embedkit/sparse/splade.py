"""SPLADE sparse encoders from sentence-transformers' SparseEncoder folders, on embedkit's own models.

SPLADE (Formal et al. 2021, 2109.10086) runs a masked-language model over a text and keeps, per vocabulary
entry, the strongest evidence any token gives for it:

    w_v = pool_t log(1 + relu(logit[t, v]))      pool = max (SPLADE v2 and later) or sum (SPLADE v1)

over the text's real tokens (padding never counts). `activation_function="log1p_relu"` (opensearch's
neural-sparse models, 2504.14839) applies log1p once more. The vector keeps the entries with w_v > 0, or
only the `max_active_dims` largest. This is what sentence-transformers' `SpladePooling` computes; two
departures in how, not what: the MLM head runs on the real tokens only (not on padding), and max pooling
takes the maximum of the raw logits before the activation, which is monotone, so the result is the same.

Inference-free SPLADE (opensearch neural-sparse doc-v3 models, sentence-transformers' `Router` with a
`SparseStaticEmbedding` query route) encodes documents with the model and queries with no model at all:
each distinct token of the query (no special tokens) weighs its static weight.

The folder layouts read (modules.json decides; each module's type is matched by its class name):
- `[Transformer (fill-mask) | MLMTransformer, SpladePooling]`: one model for queries and documents.
- `[Router]` with router_config.json's `structure` giving a "query" and a "document" route, each either
  `[SparseStaticEmbedding]` or `[Transformer, SpladePooling]`, in the named subfolders.
Anything else (a dense model, a CSR `SparseAutoEncoder`, a `Normalize` after the pooling) is refused with
ModelLoadError: skipping a module would give other vectors than sentence-transformers.

Speed: documents are tokenised once, sorted by length and packed under a padded-token budget (as the dense
path, local/batching.py); on the CPU with the `onnx` extra the encoder runs on ONNX Runtime (embedkit's
exported graph, cached by weights digest, as for dense models) and the head in torch.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from embedkit.embedder import validate_text, validate_texts
from embedkit.errors import InputError, ModelLoadError
from embedkit.hub import resolve_model_dir
from embedkit.local.backends import choose_backend, onnx_runner
from embedkit.local.batching import DEFAULT_CPU_BATCH_TOKENS, DEFAULT_MAX_BATCH_SIZE, pack
from embedkit.local.loader import check_vocabulary, max_input_tokens, resolve_device, resolve_dtype
from embedkit.local.tokenizer import load_model_tokenizer, plain_copy
from embedkit.local.tokens import Encoder
from embedkit.models.base import EmbeddingModel
from embedkit.models.loading import assign_weights
from embedkit.models.mlm import MaskedLM, MLMHead
from embedkit.models.registry import detect_family
from embedkit.models.st_files import PipelineFiles, read_json
from embedkit.onnx.model import OnnxModel
from embedkit.sparse.base import SparseVector
from embedkit.tasks import TaskTable
from embedkit.weights import load_state_dict, tensor_shapes, weights_digest

__all__ = [
    "POOLING_ACTIVATIONS",
    "POOLING_STRATEGIES",
    "MaskedLMRoute",
    "SpladeEncoder",
    "SpladeLayout",
    "StaticRoute",
    "is_sparse_model_dir",
    "load_splade",
    "read_splade_layout",
]

log = logging.getLogger(__name__)

POOLING_STRATEGIES = ("max", "sum")
POOLING_ACTIVATIONS = ("relu", "log1p_relu")
# on a GPU: the logits of a pass are [tokens, vocabulary] floats (8192 x 30522 x 4 B = 1 GB), so half
# the dense default; on the CPU the dense default (smaller passes stay in cache)
DEFAULT_GPU_SPARSE_BATCH_TOKENS = 8192
_SPARSE_MODULES = ("SpladePooling", "SparseStaticEmbedding", "MLMTransformer")
# a tokenizer_config.json model_max_length at or past this is transformers' "no limit" placeholder
_NO_LIMIT = 10**9

# -- what the folder says -------------------------------------------------------------------------


@dataclass(frozen=True)
class MLMSpec:
    """A `[Transformer, SpladePooling]` route: the model's folder and the pooling it records."""

    folder: Path
    strategy: str = "max"
    activation: str = "relu"


@dataclass(frozen=True)
class StaticSpec:
    """A `[SparseStaticEmbedding]` route: the folder with its weight vector and tokenizer."""

    folder: Path


@dataclass(frozen=True)
class SpladeLayout:
    """What a SparseEncoder folder holds: the document and query routes, prompts, the recorded pruning."""

    document: MLMSpec
    query: MLMSpec | StaticSpec
    prompts: dict[str, str] = field(default_factory=dict)
    max_active_dims: int | None = None


def _kind(module: dict, where: Path) -> str:
    if not isinstance(module, dict) or not isinstance(module.get("type"), str):
        raise ModelLoadError(f"{where}: each module needs a 'type' string")
    return module["type"].rsplit(".", 1)[-1]


def _pooling(folder: Path) -> tuple[str, str]:
    path = folder / "config.json"
    raw = read_json(path) if path.is_file() else {}
    strategy = raw.get("pooling_strategy", "max")
    activation = raw.get("activation_function", "relu")
    if strategy not in POOLING_STRATEGIES:
        raise ModelLoadError(
            f"{path}: pooling_strategy={strategy!r} is not implemented; embedkit's SPLADE pools by "
            f"{' or '.join(POOLING_STRATEGIES)}"
        )
    if activation not in POOLING_ACTIVATIONS:
        raise ModelLoadError(
            f"{path}: activation_function={activation!r} is not implemented; embedkit's SPLADE applies "
            f"{' or '.join(POOLING_ACTIVATIONS)}"
        )
    return strategy, activation


def _check_fill_mask(kind: str, folder: Path) -> None:
    """sentence-transformers >= 5.4 saves SPLADE's model as a plain `Transformer` with
    transformer_task "fill-mask"; a Transformer without it gives token embeddings, not MLM logits."""
    if kind == "MLMTransformer":
        return
    config = folder / "sentence_bert_config.json"
    task = read_json(config).get("transformer_task") if config.is_file() else None
    if task != "fill-mask":
        raise ModelLoadError(
            f"{folder}: the Transformer module has transformer_task={task!r}, not 'fill-mask'; "
            "a SPLADE model runs its masked-LM head (this looks like a dense model: use embedkit.load)"
        )


def _route(model_dir: Path, kinds: list[tuple[str, Path]], where: str) -> MLMSpec | StaticSpec:
    names = [kind for kind, _ in kinds]
    if names == ["SparseStaticEmbedding"]:
        return StaticSpec(kinds[0][1])
    if len(names) == 2 and names[0] in ("Transformer", "MLMTransformer") and names[1] == "SpladePooling":
        _check_fill_mask(names[0], kinds[0][1])
        strategy, activation = _pooling(kinds[1][1])
        return MLMSpec(kinds[0][1], strategy, activation)
    dense = "; this is a dense embedding model: load it with embedkit.load" if "Pooling" in names else ""
    raise ModelLoadError(
        f"{model_dir}: {where} is {names}; embedkit reads SPLADE models ([Transformer (fill-mask), SpladePooling]) "
        "and inference-free ones ([SparseStaticEmbedding] for queries); other modules would be skipped and "
        f"give other vectors than sentence-transformers{dense}"
    )


def is_sparse_model_dir(model_dir: Path) -> bool:
    """True when `model_dir` is a sentence-transformers SparseEncoder folder (config_sentence_transformers.json
    says so, or its modules are SPLADE's): what `embedkit serve` serves on /embed_sparse."""
    st_config = model_dir / "config_sentence_transformers.json"
    if st_config.is_file():
        raw = read_json(st_config)
        if isinstance(raw, dict) and raw.get("model_type") == "SparseEncoder":
            return True
    for name in ("modules.json", "router_config.json"):
        path = model_dir / name
        if path.is_file() and any(kind in path.read_text(encoding="utf-8") for kind in _SPARSE_MODULES):
            return True
    return False


def read_splade_layout(model_dir: Path) -> SpladeLayout:
    """Read modules.json (and router_config.json) of a sentence-transformers SparseEncoder folder.

    ModelLoadError naming the file when the folder is not a SPLADE model embedkit implements.
    """
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        raise ModelLoadError(
            f"{model_dir}: no modules.json; a SPLADE model is a sentence-transformers SparseEncoder folder "
            "(modules.json naming a fill-mask Transformer and SpladePooling, or a Router)"
        )
    modules = read_json(modules_path)
    if not isinstance(modules, list) or not modules:
        raise ModelLoadError(f"{modules_path}: expected a non-empty list of modules")
    kinds = [(_kind(module, modules_path), model_dir / str(module.get("path", ""))) for module in modules]
    if [kind for kind, _ in kinds] == ["Router"]:
        document, query = _router_routes(kinds[0][1])
    else:
        document = query = _route(model_dir, kinds, "modules.json")
    if not isinstance(document, MLMSpec):
        raise ModelLoadError(f"{model_dir}: the document route has no model (a SparseStaticEmbedding only)")
    st_config = model_dir / "config_sentence_transformers.json"
    raw = read_json(st_config) if st_config.is_file() else {}
    if raw.get("model_type") not in (None, "SparseEncoder"):
        raise ModelLoadError(f"{st_config}: model_type={raw.get('model_type')!r}, not a SparseEncoder")
    prompts = {str(k): str(v) for k, v in (raw.get("prompts") or {}).items()}
    max_active_dims = raw.get("max_active_dims")
    return SpladeLayout(document, query, prompts, max_active_dims)


def _router_routes(folder: Path) -> tuple[MLMSpec | StaticSpec, MLMSpec | StaticSpec]:
    path = folder / "router_config.json"
    if not path.is_file():
        raise ModelLoadError(f"{folder}: a Router module needs router_config.json")
    raw = read_json(path)
    types, structure = raw.get("types"), raw.get("structure")
    if not isinstance(types, dict) or not isinstance(structure, dict):
        raise ModelLoadError(f"{path}: expected 'types' and 'structure' objects")
    routes = {}
    for name in ("query", "document"):
        members = structure.get(name)
        if not isinstance(members, list) or not members:
            raise ModelLoadError(
                f"{path}: no {name!r} route (routes: {', '.join(structure)}); an inference-free SPLADE model "
                "routes 'query' and 'document'"
            )
        kinds = [(str(types.get(member, "")).rsplit(".", 1)[-1], folder / member) for member in members]
        routes[name] = _route(folder, kinds, f"the {name} route")
    return routes["document"], routes["query"]


# -- the two routes -------------------------------------------------------------------------------


def _activate(scores: torch.Tensor, activation: str) -> torch.Tensor:
    """log(1 + relu(x)) (and log1p once more for "log1p_relu"), in place."""
    scores = scores.relu_().log1p_()
    return scores.log1p_() if activation == "log1p_relu" else scores


def splade_pool(logits: torch.Tensor, lengths: Sequence[int], strategy: str, activation: str) -> torch.Tensor:
    """logits [N, V] of B packed rows of `lengths` tokens -> [B, V] SPLADE weights (module docstring)."""
    out = torch.empty((len(lengths), logits.shape[1]), dtype=logits.dtype, device=logits.device)
    if strategy == "max":
        # the activation is monotone: max then activate == activate then max, on [B, V] instead of [N, V]
        # (a reduction per row: twice as fast on the CPU as torch.segment_reduce)
        for row, part in enumerate(logits.split(list(lengths))):
            torch.amax(part, dim=0, out=out[row])
        return _activate(out, activation)
    for row, part in enumerate(_activate(logits, activation).split(list(lengths))):
        torch.sum(part, dim=0, out=out[row])
    return out


@dataclass
class MaskedLMRoute:
    """Texts -> SPLADE weights [B, V] through the encoder (torch or ONNX Runtime) and the MLM head."""

    runner: EmbeddingModel
    head: MLMHead
    encoder: Encoder
    strategy: str
    activation: str
    device: torch.device
    batch_tokens: int
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE

    @property
    def vocabulary_size(self) -> int:
        return int(self.head.bias.shape[0])

    @torch.inference_mode()
    def weights(
        self, texts: Sequence[str], prefix: str, *, truncate: bool = True, direction: str = "right"
    ) -> tuple[torch.Tensor, list[int]]:
        """[B, V] float32 on the CPU, in input order, and the token count of each text. A text past
        `encoder.max_length` tokens is cut from `direction`, or an InputError with `truncate=False`."""
        limit = self.encoder.max_length if truncate else None
        ids = self.encoder.encode(texts, [prefix] * len(texts), max_length=limit, direction=direction, name="texts")
        self.encoder.check_lengths(ids, "texts")
        out = torch.empty((len(ids), self.vocabulary_size), dtype=torch.float32)
        batches = pack(
            ids, batch_tokens=self.batch_tokens, max_batch_size=self.max_batch_size, pad_id=self.encoder.pad_id
        )
        for batch in batches:
            states = self.runner(batch.to(self.device))  # [N, H]
            logits = self.head(states.to(self.head.bias.dtype))  # [N, V]
            pooled = splade_pool(logits, batch.lengths, self.strategy, self.activation)  # [B, V]
            out[list(batch.indices)] = pooled.float().cpu()
        return out, [len(row) for row in ids]


@dataclass
class StaticRoute:
    """Texts -> [B, V] static weights of their distinct tokens (no special tokens), no model."""

    tokenizer: Tokenizer  # truncating at the route's limit, adding no special tokens
    weight: torch.Tensor  # float32 [V]

    def weights(
        self, texts: Sequence[str], prefix: str, *, truncate: bool = True, direction: str = "right"
    ) -> tuple[torch.Tensor, list[int]]:
        """As sentence-transformers' SparseStaticEmbedding, a query is always cut at the route's limit (from
        the right): `truncate` and `direction` do not apply to it."""
        encodings = self.tokenizer.encode_batch([prefix + text for text in texts], add_special_tokens=False)
        out = torch.zeros((len(texts), self.weight.shape[0]), dtype=torch.float32)
        for row, encoding in enumerate(encodings):
            present = torch.tensor(sorted(set(encoding.ids)), dtype=torch.int64)
            out[row, present] = self.weight[present]
        return out, [len(encoding.ids) for encoding in encodings]


# -- the encoder ----------------------------------------------------------------------------------


def _to_vectors(weights: torch.Tensor, max_active_dims: int | None) -> list[SparseVector]:
    """[B, V] -> one SparseVector per row: its nonzero entries (only the `max_active_dims` largest by
    magnitude, as sentence-transformers' select_max_active_dims), indices ascending."""
    if max_active_dims is not None and max_active_dims < weights.shape[1]:
        _, top = weights.abs().topk(max_active_dims, dim=1)
        weights = torch.zeros_like(weights).scatter_(1, top, weights.gather(1, top))
    rows, columns = (part.numpy() for part in weights.nonzero(as_tuple=True))
    values = weights[rows, columns].numpy().astype(np.float64)
    bounds = np.searchsorted(rows, np.arange(weights.shape[0] + 1))
    return [
        SparseVector(columns[start:end].tolist(), values[start:end].tolist())
        for start, end in itertools.pairwise(bounds)
    ]


class SpladeEncoder:
    """A SPLADE model as an `embedkit.sparse.SparseEncoder` (modifier None: the weights are complete).

    Build it with `load_splade` (or `embedkit.sparse.load_sparse`). `embed_documents` runs the document
    route, `embed_query` the query route (the same model, or static weights for inference-free models),
    each with its sentence-transformers prompt ("document", "query") when the model records one.
    """

    modifier: str | None = None

    def __init__(
        self,
        *,
        name: str,
        document: MaskedLMRoute,
        query: MaskedLMRoute | StaticRoute,
        prompts: dict[str, str],
        max_active_dims: int | None,
        digest: str,
        layout: SpladeLayout,
    ) -> None:
        self.name = name
        self.document = document
        self.query = query
        self.prompts = prompts
        self.max_active_dims = max_active_dims
        self.weights_digest = digest
        self.layout = layout

    def __repr__(self) -> str:
        inference_free = isinstance(self.query, StaticRoute)
        return (
            f"SpladeEncoder(name={self.name!r}, backend={self.backend!r}, inference_free={inference_free}, "
            f"max_active_dims={self.max_active_dims})"
        )

    @property
    def max_length(self) -> int:
        """Document tokens read per text (special tokens included); longer texts are cut."""
        return self.document.encoder.max_length

    @property
    def vocabulary_size(self) -> int:
        """V: every index is below it."""
        return self.document.vocabulary_size

    @property
    def backend(self) -> str:
        return "onnx" if isinstance(self.document.runner, OnnxModel) else "torch"

    @property
    def inference_free(self) -> bool:
        """True when queries are weighed by static token weights, without the model."""
        return isinstance(self.query, StaticRoute)

    def embed_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """One sparse vector per text, in order. InputError for an empty list, a non-str or an empty string."""
        return self.encode(texts, prompt_name="document")[0]

    def embed_query(self, text: str) -> SparseVector:
        """The query's sparse vector. InputError for a non-str or an empty string. On an inference-free
        model a query of only unknown or special tokens gives an empty vector (it matches nothing)."""
        validate_text(text, 0)
        return self.encode([text], prompt_name="query")[0][0]

    def embed_queries(self, texts: Sequence[str]) -> list[SparseVector]:
        """`embed_query` of each text, batched."""
        return self.encode(texts, prompt_name="query")[0]

    def encode(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str | None = None,
        truncate: bool = True,
        truncation_direction: str = "right",
    ) -> tuple[list[SparseVector], int]:
        """Sparse vectors of `texts` and the tokens that ran (TEI's /embed_sparse, which the server calls).

        `prompt_name` as TEI takes it: None runs the document route without a prompt; "query" the query
        route (the static weights of an inference-free model) with the model's "query" prompt, if any;
        another name of the model's prompts runs the document route behind that prompt. InputError for an
        unknown name, bad texts, or (with `truncate=False`) a document past `max_length` tokens.
        """
        texts = validate_texts(texts)
        route: MaskedLMRoute | StaticRoute = self.document
        prefix = ""
        if prompt_name == "query":
            route, prefix = self.query, self.prompts.get("query", "")
        elif prompt_name == "document":
            prefix = self.prompts.get("document", "")
        elif prompt_name is not None:
            if prompt_name not in self.prompts:
                names = ", ".join(sorted({"query", "document", *self.prompts}))
                raise InputError(f"prompt_name={prompt_name!r} is not one of this model's prompts: {names}")
            prefix = self.prompts[prompt_name]
        weights, lengths = route.weights(texts, prefix, truncate=truncate, direction=truncation_direction)
        return _to_vectors(weights, self.max_active_dims), sum(lengths)

    def fingerprint(self) -> dict[str, Any]:
        """What decides the vectors: recorded in a collection, compared when it is written again."""
        document = self.layout.document
        return {
            "kind": "splade",
            "name": self.name,
            "weights_digest": self.weights_digest,
            "pooling": document.strategy,
            "activation": document.activation,
            "inference_free": self.inference_free,
            "max_active_dims": self.max_active_dims,
            "max_length": self.max_length,
            "prompts": {key: value for key, value in self.prompts.items() if value},
        }


def load_splade(
    model: str | os.PathLike[str],
    *,
    max_active_dims: int | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    backend: str | None = None,
    batch_tokens: int | None = None,
    max_length: int | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    onnx_cache_dir: str | os.PathLike[str] | None = None,
) -> SpladeEncoder:
    """A SPLADE model (folder or hub id, sentence-transformers' SparseEncoder layout) on embedkit's models.

    `max_active_dims` keeps each vector's k largest weights (default: what the model's
    config_sentence_transformers.json records, else all). `device`, `dtype` and `backend` as in
    `embedkit.load` ("auto": ONNX Runtime for the encoder on the CPU when the `onnx` extra is installed and
    the model exports). `batch_tokens` is the padded-token budget of one forward pass; `max_length` cuts
    documents shorter than the model's limit. ModelLoadError, naming the folder and the reason, for a
    folder that is not a SPLADE model embedkit implements, or a missing or unreadable file.
    """
    model_dir, model_id = resolve_model_dir(model, revision=revision, cache_dir=cache_dir, require_config=False)
    layout = read_splade_layout(model_dir)
    if max_active_dims is None:
        max_active_dims = layout.max_active_dims
    if max_active_dims is not None and (
        isinstance(max_active_dims, bool) or not isinstance(max_active_dims, int) or max_active_dims < 1
    ):
        raise InputError(f"max_active_dims={max_active_dims!r}: expected a positive int or None")
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    if batch_tokens is None:
        batch_tokens = DEFAULT_CPU_BATCH_TOKENS if torch_device.type == "cpu" else DEFAULT_GPU_SPARSE_BATCH_TOKENS
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise InputError(f"batch_tokens={batch_tokens!r}: expected a positive int")
    document = _load_mlm_route(
        layout.document, torch_device, torch_dtype, backend, batch_tokens, max_length, onnx_cache_dir
    )
    digest = hashlib.sha256(weights_digest(layout.document.folder).encode())
    query: MaskedLMRoute | StaticRoute
    if isinstance(layout.query, StaticSpec):
        query = _load_static_route(layout.query, document.vocabulary_size)
        digest.update(weights_digest(layout.query.folder).encode())
    elif layout.query.folder == layout.document.folder and layout.query == layout.document:
        query = document
    else:
        query = _load_mlm_route(
            layout.query, torch_device, torch_dtype, backend, batch_tokens, max_length, onnx_cache_dir
        )
        digest.update(weights_digest(layout.query.folder).encode())
    encoder = SpladeEncoder(
        name=model_id,
        document=document,
        query=query,
        prompts=layout.prompts,
        max_active_dims=max_active_dims,
        digest=digest.hexdigest(),
        layout=layout,
    )
    log.info("%s: %r", model_dir, encoder)
    return encoder


def _load_mlm_route(
    spec: MLMSpec,
    device: torch.device,
    dtype: torch.dtype,
    backend: str | None,
    batch_tokens: int,
    max_length: int | None,
    onnx_cache_dir: str | os.PathLike[str] | None,
) -> MaskedLMRoute:
    folder = spec.folder
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{folder}: no config.json object for the masked-LM model")
    chosen, required = choose_backend(backend, None, device, dtype)
    tensor_names = set(tensor_shapes(folder))
    family = detect_family(config, tensor_names, str(folder)).family
    if family.masked_lm is None:
        raise ModelLoadError(
            f"{folder}: embedkit has no masked-LM head for the {family.name} family; SPLADE runs on BERT and "
            "DistilBERT checkpoints"
        )
    with torch.device("meta"):
        module, tensor_layout = family.masked_lm(config, tensor_names, str(folder))
    if not isinstance(module, MaskedLM):
        raise ModelLoadError(f"{folder}: the {family.name} family's masked_lm hook gave no MaskedLM")
    assign_weights(module, load_state_dict(folder), tensor_layout, str(folder))
    module = module.to(device=device, dtype=dtype).eval()
    tokenizer, tokenizer_file = load_model_tokenizer(folder)
    check_vocabulary(tokenizer, module.encoder, tokenizer_file)
    bert_config = folder / "sentence_bert_config.json"
    raw = read_json(bert_config) if bert_config.is_file() else {}
    pipeline = PipelineFiles(max_seq_length=raw.get("max_seq_length"), do_lower_case=bool(raw.get("do_lower_case")))
    limit = max_input_tokens(pipeline, module.encoder, folder)
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not 2 < max_length <= limit:
            raise InputError(f"max_length={max_length!r}: expected an int from 3 to this model's limit of {limit}")
        limit = max_length
    encoder = Encoder(tokenizer, max_length=limit, lower_case=pipeline.do_lower_case, include_prompt=True)
    runner: EmbeddingModel = module.encoder
    if chosen == "onnx":
        # SPLADE reads the token states; the graph's pooled output (the cheapest mode) goes unused
        runner = onnx_runner(
            module.encoder,
            family,
            folder,
            TaskTable(),
            None,
            None,
            onnx_cache_dir,
            pooling=("cls",),
            dense=None,
            required=required,
        )
    return MaskedLMRoute(
        runner=runner,
        head=module.head,
        encoder=encoder,
        strategy=spec.strategy,
        activation=spec.activation,
        device=device,
        batch_tokens=batch_tokens,
    )


def _load_static_route(spec: StaticSpec, vocabulary_size: int) -> StaticRoute:
    folder = spec.folder
    tokenizer, _ = load_model_tokenizer(folder)
    config_path = folder / "config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    source = config.get("path")
    if isinstance(source, str) and source.endswith(".json"):
        weight = _idf_weights(folder / source, tokenizer)
    else:
        state = load_state_dict(folder)
        if "weight" not in state:
            raise ModelLoadError(f"{folder}: the SparseStaticEmbedding weights hold no 'weight' tensor")
        weight = state["weight"].float()
    if weight.ndim != 1 or not 0 < weight.shape[0] <= vocabulary_size:
        raise ModelLoadError(
            f"{folder}: static weights of shape {tuple(weight.shape)}; expected one weight per token of the "
            f"document model's vocabulary ({vocabulary_size} entries)"
        )
    highest = max(tokenizer.get_vocab(with_added_tokens=True).values())
    if highest >= weight.shape[0]:
        raise ModelLoadError(f"{folder}: the tokenizer makes ids up to {highest}, past the {weight.shape[0]} weights")
    tokenizer = plain_copy(tokenizer)
    limit = (
        read_json(folder / "tokenizer_config.json").get("model_max_length")
        if (folder / "tokenizer_config.json").is_file()
        else None
    )
    # sentence-transformers tokenises queries with truncation=True: at the tokenizer's model_max_length
    if isinstance(limit, int) and 0 < limit < _NO_LIMIT:
        tokenizer.enable_truncation(limit)
    return StaticRoute(tokenizer, weight)


def _idf_weights(path: Path, tokenizer: Tokenizer) -> torch.Tensor:
    """An idf.json (token -> weight), as sentence-transformers' SparseStaticEmbedding.from_json reads it."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: expected an object of token -> weight")
    weight = torch.zeros(tokenizer.get_vocab_size(with_added_tokens=True), dtype=torch.float32)
    for token, value in raw.items():
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise ModelLoadError(f"{path}: token {token!r} is not in the tokenizer's vocabulary")
        weight[token_id] = float(value)
    return weight
