"""The CPU fast path: embedkit's own models exported by torch's ONNX exporter, cached, run on ONNX Runtime.

`embedkit.load(..., backend="onnx" | "auto", quantize="int8")` is the way in; this package holds the
export (export.py), the on-disk graph cache (cache.py) and the runner that stands in for the torch
module (model.py). Needs the `onnx` extra.
"""

from embedkit.onnx.cache import GraphCache, GraphKey, default_cache_dir
from embedkit.onnx.model import OnnxModel, import_onnxruntime

__all__ = ["GraphCache", "GraphKey", "OnnxModel", "default_cache_dir", "import_onnxruntime"]
