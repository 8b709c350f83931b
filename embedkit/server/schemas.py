"""Request and response bodies of the TEI-compatible routes, field for field as TEI names them.

As TEI's OpenAPI schema (router/src/http/types.rs) defines them. Unknown fields are ignored (TEI never
denies them); `null` equals absent. Types are strict, as TEI's serde: `"8"` or `8.0` is not an int, `"yes"` not a bool.
`inputs` follows TEI's untagged grammar: a text, one token-id list, or a list of texts and token-id lists.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

__all__ = [
    "ClassifierModel",
    "EmbedRequest",
    "EmbedSparseRequest",
    "EmbeddingModel",
    "ErrorResponse",
    "Info",
    "ModelType",
    "OpenAIEmbedding",
    "OpenAIEmbeddingRequest",
    "OpenAIEmbeddingResponse",
    "OpenAIErrorResponse",
    "OpenAIRerankRequest",
    "OpenAIUsage",
    "Rank",
    "RerankRequest",
    "RerankerModelType",
    "SimpleToken",
    "SparseValue",
    "TokenizeRequest",
]

TokenIds = list[StrictInt]
# TEI's `Input`, tried in order: `[101, 2023]` is ONE token-id input, `[]` an empty one
Inputs = StrictStr | TokenIds | list[StrictStr | TokenIds]
Texts = StrictStr | list[StrictStr]
TruncationDirection = Literal["left", "Left", "right", "Right"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class EmbedRequest(_Request):
    inputs: Inputs
    truncate: bool | None = Field(None, description="null: the server's --auto-truncate")
    truncation_direction: TruncationDirection = "right"
    prompt_name: str | None = Field(None, description="a prompt or task name from /info `prompts`")
    normalize: bool = True
    dimensions: int | None = Field(None, description="Matryoshka: keep the first d values, then normalise")


class EmbedSparseRequest(_Request):
    """TEI's /embed_sparse: /embed's fields without normalize and dimensions."""

    inputs: Inputs
    truncate: bool | None = Field(None, description="null: the server's --auto-truncate")
    truncation_direction: TruncationDirection = "right"
    prompt_name: str | None = Field(None, description="'query' for queries; a prompt name from /info `prompts`")


class SparseValue(BaseModel):
    """One nonzero weight of a sparse vector: its vocabulary index and value (TEI's `SparseValue`)."""

    index: int
    value: float


class OpenAIEmbeddingRequest(_Request):
    input: Inputs
    model: str | None = None
    user: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class RerankRequest(_Request):
    """TEI's /rerank: one query against `texts`."""

    query: StrictStr
    texts: list[StrictStr]
    truncate: bool | None = Field(None, description="null: the server's --auto-truncate")
    truncation_direction: TruncationDirection = "right"
    raw_scores: bool = Field(False, description="the model's logit instead of its activation")
    return_text: bool = False


class Rank(BaseModel):
    """One text's place in TEI's /rerank answer (`text` only when return_text)."""

    index: int
    text: str | None = None
    score: float


class OpenAIRerankRequest(_Request):
    """The Cohere/Jina-style /v1/rerank that vLLM and infinity serve."""

    model: str | None = None
    query: StrictStr
    documents: list[StrictStr]
    top_n: int | None = Field(None, description="return the best top_n; null: all")
    return_documents: bool = False
    raw_scores: bool = Field(False, description="infinity's spelling: the logit instead of the activation")
    use_activation: bool | None = Field(None, description="vLLM's spelling: false gives the logit")


class TokenizeRequest(_Request):
    inputs: Texts  # TEI's /tokenize takes no token ids
    add_special_tokens: bool = True
    prompt_name: str | None = None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None  # byte offsets into the (prompt-prefixed) input; null for special tokens
    stop: int | None


class EmbeddingModel(BaseModel):
    pooling: str


class ModelType(BaseModel):
    embedding: EmbeddingModel


class ClassifierModel(BaseModel):
    """TEI's ClassifierModel: the labels of a sequence-classification head."""

    id2label: dict[str, str]
    label2id: dict[str, int]


class RerankerModelType(BaseModel):
    """/info `model_type` of a reranker: {"reranker": {"id2label", "label2id"}}, as TEI reports it."""

    reranker: ClassifierModel


class Info(BaseModel):
    model_id: str
    model_sha: str | None = None
    model_dtype: str
    served_model_name: str
    model_type: ModelType | RerankerModelType
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None = None
    docker_label: str | None = None
    # embedkit's addition: task / prompt names a request may send as prompt_name, with their text
    prompts: dict[str, str]
    # tasks whose prompt_name also selects a LoRA adapter (jina-embeddings-v3): no prefix reproduces them
    adapters: list[str] = []


class ErrorResponse(BaseModel):
    error: str
    error_type: str


class OpenAIErrorResponse(BaseModel):
    message: str
    code: int
    type: str
