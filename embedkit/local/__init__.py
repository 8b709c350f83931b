"""In-process inference: `embedkit.load` builds a LocalEmbedder over embedkit's own model files.

    loader.py     load(): folder -> family -> module with weights, tokenizer, pipeline files, backend
    backends.py   torch or ONNX Runtime (the CPU fast path)
    tokenizer.py  the one tokenizer loader (also the Chunker's); imports neither torch nor transformers
    tokens.py     texts and id lists -> checked, prompted, truncated model inputs
    batching.py   TokenBatch (flat ids + cu_seqlens) and token-budget packing
    embedder.py   LocalEmbedder: plan, tokenise, pack, run, pool, restore order, post-process
    late.py       late chunking: span vectors pooled from one pass over a document

Nothing here is imported until used, so `import embedkit.local.tokenizer` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedkit.local.embedder import LocalEmbedder
    from embedkit.local.loader import load

__all__ = ["LocalEmbedder", "load"]

_LAZY = {"LocalEmbedder": "embedkit.local.embedder", "load": "embedkit.local.loader"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embedkit.local' has no attribute {name!r}")
