"""32 concurrent clients against `embedkit serve`: no errors and exact answers, with and without batching.

The same load runs against a server that packs concurrent requests into shared forward passes
(the default) and one started with --max-batch-requests 1 (one request per forward pass). Figures
are printed (run with -s to see them). The test asserts correctness only: which one is faster on a
2-core CPU depends on what else the machine runs (no timing assertions in tests).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import API_KEY, start_server, stop_server

CLIENTS = 32
SECONDS = 8.0
WORDS = "vector search embeds text into points that a store ranks by similarity to a query".split()


def _requests(seed: int, count: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [
        [" ".join(rng.choices(WORDS, k=rng.randint(3, 60))) for _ in range(rng.randint(1, 4))] for _ in range(count)
    ]


def _drive(url: str, expected: dict[str, np.ndarray]) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    latencies: list[float] = []
    failures: list[str] = []
    texts_done = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + SECONDS

    def client(seed: int) -> None:
        pool = _requests(seed, 30)
        with httpx.Client(timeout=60, headers=headers) as http:
            index = 0
            while time.monotonic() < stop_at:
                texts = pool[index % len(pool)]
                index += 1
                start = time.perf_counter()
                response = http.post(f"{url}/embed", json={"inputs": texts})
                elapsed = time.perf_counter() - start
                with lock:
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                        continue
                    got = np.asarray(response.json(), dtype=np.float32)
                    want = np.stack([expected[text] for text in texts])
                    if got.shape != want.shape or np.abs(got - want).max() > 1e-5:
                        failures.append(f"wrong vectors for {texts[:1]}")
                    latencies.append(elapsed)
                    texts_done[0] += len(texts)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - began
    return {
        "requests": len(latencies),
        "texts_per_s": texts_done[0] / wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)) if latencies else float("nan"),
        "failures": failures,
    }


@pytest.mark.slow
def test_concurrent_clients_get_exact_answers(tmp_path: Path, minilm) -> None:
    every_text = sorted({text for seed in range(CLIENTS) for batch in _requests(seed, 30) for text in batch})
    expected = dict(zip(every_text, minilm.embed(every_text), strict=True))  # one request at a time, locally

    results = {}
    for name, args in (("dynamic batching", ()), ("one request per pass", ("--max-batch-requests", "1"))):
        server = start_server(tmp_path, "--max-concurrent-requests", "4096", *args)
        try:
            results[name] = _drive(server.url, expected)
        finally:
            stop_server(server)

    for name, result in results.items():
        print(
            f"\n{name}: {result['requests']} requests, {result['requests_per_s']:.1f} req/s, "
            f"{result['texts_per_s']:.1f} texts/s, p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms"
        )
        assert not result["failures"], result["failures"][:5]
        assert result["requests"] > CLIENTS
    batched, serial = results["dynamic batching"], results["one request per pass"]
    print(f"dynamic batching / one request per pass: {batched['texts_per_s'] / serial['texts_per_s']:.2f}x texts/s")
