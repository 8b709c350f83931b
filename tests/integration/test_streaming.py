"""embed_iter: any iterable in, arrays out in input order, memory bounded by the window."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import embedkit
from embedkit.errors import InputError

# a child process so that its peak RSS is its own; it reads a generator of `count` distinct
# texts of ~60 tokens and keeps nothing it is given
CHILD = """
import json, resource, sys
import embedkit
model_dir, count = sys.argv[1], int(sys.argv[2])
embedder = embedkit.load(model_dir, device="cpu")
def texts():
    for i in range(count):
        yield f"document {i}: " + " ".join(f"word{(i * 7 + j) % 997}" for j in range(40))
seen = 0
for vectors in embedder.embed_iter(texts(), window=512):
    seen += len(vectors)
print(json.dumps({"seen": seen, "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _texts(count: int) -> list[str]:
    return [f"text number {i} " + "more words " * (i % 13) for i in range(count)]


def test_stream_equals_one_call(tiny_bert_dir: Path) -> None:
    embedder = embedkit.load(tiny_bert_dir, device="cpu")
    texts = _texts(50)
    parts = list(embedder.embed_iter((t for t in texts), window=7, dimensions=16))
    assert [len(p) for p in parts] == [7] * 7 + [1]
    np.testing.assert_allclose(np.concatenate(parts), embedder.embed(texts, dimensions=16), atol=1e-6)


def test_stream_errors_count_over_the_whole_stream(tiny_bert_dir: Path) -> None:
    embedder = embedkit.load(tiny_bert_dir, device="cpu")
    stream = embedder.embed_iter(iter([*_texts(12), 5, "x"]), window=4)
    assert len(next(stream)) == 4
    with pytest.raises(InputError, match=r"texts\[12\] is int"):
        list(stream)
    assert list(embedder.embed_iter(iter([]))) == []
    with pytest.raises(InputError, match="one task name for the whole stream"):
        next(embedder.embed_iter(["a"], task=["query"]))  # type: ignore[arg-type]


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_input_count(tiny_bert_dir: Path) -> None:
    def peak_mib(count: int) -> float:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(tiny_bert_dir), str(count)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["seen"] == count
        return report["peak_rss_kib"] / 1024

    small, large = peak_mib(2_000), peak_mib(32_000)
    # 16x the texts: a list-holding implementation grows by hundreds of MiB here
    assert large - small < 40, f"peak RSS {small:.0f} MiB for 2k texts, {large:.0f} MiB for 32k"
