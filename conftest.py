"""Settings for every test tree in this repository (tests/ and integrations/langchain/tests/).

The suite runs the torch backend unless a test asks for ONNX itself (tests/onnx/), so that a
checkout with the `onnx` extra installed tests the same path as one without; exported graphs go to
a throwaway cache, never the user's.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("EMBEDKIT_BACKEND", "torch")
if "EMBEDKIT_CACHE_DIR" not in os.environ:
    os.environ["EMBEDKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="embedkit-test-cache-")
    atexit.register(shutil.rmtree, os.environ["EMBEDKIT_CACHE_DIR"], ignore_errors=True)
