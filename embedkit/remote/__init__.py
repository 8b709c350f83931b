"""Remote embedding over HTTP: TEI's native API or the OpenAI-compatible one, sync and async.

`TEIClient` and `AsyncTEIClient` satisfy the Embedder contract of local models, so app code moves between
local and remote by changing one line. Laid out as httpx is:

    settings.py      ClientSettings (every constructor argument, frozen; the API key never in its repr),
                     RetryPolicy and the documented defaults
    models.py        ServerInfo, Token, one Batch on its way, token-id and text input checks
    wire.py          the two wire formats: TEI's /embed, /embed_sparse, /rerank, /tokenize, /info and the
                     OpenAI-style /v1/embeddings and /v1/rerank, requests built and answers read
    status.py        the one status table: status code -> retry, split, or which typed error
    flow.py          retry + backoff + Retry-After + 413 split, written once as generators
    base.py          ClientBase: batching, tasks -> prompt_name or prefix, what /info taught; no I/O
    client.py        TEIClient: drives the flows with httpx.Client and time.sleep (threads for batches)
    async_client.py  AsyncTEIClient: with httpx.AsyncClient, asyncio.sleep and a semaphore

Both shells have the same methods (tests/remote/test_shells.py checks it). Inputs are texts or token-id
lists (TEI's and OpenAI's token-array input). `rerank` gives `embedkit.rerank.RerankResult`s, as a local
reranker does; nothing here imports torch.
"""

from embedkit.remote.async_client import AsyncTEIClient
from embedkit.remote.client import TEIClient
from embedkit.remote.models import ServerInfo, Token
from embedkit.remote.settings import API_KEY_ENV, DEFAULT_TIMEOUT, ClientSettings, RetryPolicy

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_TIMEOUT",
    "AsyncTEIClient",
    "ClientSettings",
    "RetryPolicy",
    "ServerInfo",
    "TEIClient",
    "Token",
]
