"""A bounded soak of `embedkit serve`: 64 loopback clients, valid and invalid requests mixed.

Valid requests must all succeed with the right vectors; invalid ones must get their documented
refusal. Memory is judged at rest: the load runs in PHASES, and between phases every client waits
while the server's RSS is read with no request in flight. RSS under load swings by hundreds of MiB
with whatever batches happen to be in flight (seen: 640 -> 912 MiB within seconds), which says
nothing about leaks; the idle figure does, and it must not grow after the first phase (warm-up).
Duration: EMBEDKIT_SOAK_SECONDS (default 30; the figures in docs/reliability.md come from a 60 s run).
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from .conftest import API_KEY, start_server, stop_server

CLIENTS = 64
PHASES = 5
WORDS = "vector search embedding model token chunk query document server batch latency memory".split()

# (request body or raw bytes, headers override, expected status)
INVALID = [
    ({"inputs": []}, None, 400),
    ({"inputs": ["ok", ""]}, None, 400),
    ({"inputs": ["x"] * 40}, None, 422),
    ({"inputs": "x", "prompt_name": "nope"}, None, 422),
    ({"inputs": "x", "dimensions": 0}, None, 422),
    (b'{"inputs": [', None, 400),
    ({"inputs": "x"}, {"Authorization": "Bearer wrong"}, 401),
]


def _texts(rng: random.Random) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 60))) for _ in range(rng.randint(1, 8))]


@pytest.mark.slow
def test_soak(tmp_path: Path, minilm) -> None:
    seconds = float(os.environ.get("EMBEDKIT_SOAK_SECONDS", "30"))
    server = start_server(tmp_path, "--max-concurrent-requests", "4096")
    process = psutil.Process(server.process.pid)
    idle_rss: list[float] = []  # MiB, read after each phase with no request in flight
    latencies: list[float] = []
    counts = {"valid": 0, "valid_failed": 0, "invalid": 0, "invalid_wrong": 0}
    failures: list[str] = []
    lock = threading.Lock()
    phase_done = threading.Barrier(CLIENTS + 1, timeout=120)  # every client has finished its last request
    phase_start = threading.Barrier(CLIENTS + 1, timeout=120)  # the idle reading is taken
    auth = {"Authorization": f"Bearer {API_KEY}"}

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(PHASES):
            phase_start.wait()
            # new connections each phase: a kept-alive one idles through the pause past the server's
            # 5 s keep-alive and may be closed just as the next request goes out on it
            with httpx.Client(base_url=server.url, timeout=60) as http:
                try:
                    load(http, rng, time.monotonic() + seconds / PHASES)
                except httpx.HTTPError as exc:  # counted and reported, and the barrier is still reached
                    with lock:
                        counts["valid_failed"] += 1
                        failures.append(f"transport: {exc!r}")
            phase_done.wait()

    def load(http: httpx.Client, rng: random.Random, stop: float) -> None:
        while time.monotonic() < stop:
            if rng.random() < 0.25:
                body, headers, expected = rng.choice(INVALID)
                kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
                response = http.post("/embed", headers=headers or {**auth, "content-type": "application/json"},
                                     **kwargs)  # fmt: skip
                with lock:
                    counts["invalid"] += 1
                    if response.status_code != expected:
                        counts["invalid_wrong"] += 1
                        failures.append(f"{body!r}: {response.status_code} {response.text[:100]}")
                continue
            texts = _texts(rng)
            start = time.perf_counter()
            response = http.post("/embed", json={"inputs": texts}, headers=auth)
            elapsed = time.perf_counter() - start
            ok = response.status_code == 200 and len(response.json()) == len(texts)
            with lock:
                counts["valid"] += 1
                latencies.append(elapsed)
                if not ok:
                    counts["valid_failed"] += 1
                    failures.append(f"valid: {response.status_code} {response.text[:100]}")
                elif rng.random() < 0.05:  # spot-check vectors against local embedding
                    got = np.asarray(response.json(), dtype=np.float32)
                    if not np.allclose(got, minilm.embed(texts), atol=1e-5):
                        counts["valid_failed"] += 1
                        failures.append("valid: wrong vectors")

    def read_idle_rss() -> float:
        time.sleep(1.0)  # the batcher finishes its last batch and hands freed pages back
        readings = []
        for _ in range(5):
            readings.append(process.memory_info().rss / 2**20)
            time.sleep(0.2)
        return min(readings)

    try:
        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for _ in range(PHASES):
            phase_start.wait()
            phase_done.wait()
            idle_rss.append(read_idle_rss())
        for thread in threads:
            thread.join()
        assert API_KEY not in server.log() and "wrong" not in server.log()
    finally:
        phase_start.abort()
        phase_done.abort()
        stop_server(server)

    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
    print(
        f"\nsoak {seconds:.0f} s, {CLIENTS} clients: {counts['valid']} valid requests "
        f"({counts['valid_failed']} failed), "
        f"{counts['invalid']} invalid ({counts['invalid_wrong']} answered wrongly); "
        f"p50 {p50:.0f} ms, p99 {p99:.0f} ms; server RSS at rest after each phase (MiB): "
        f"{[round(v) for v in idle_rss]}"
    )
    assert counts["valid_failed"] == 0 and counts["invalid_wrong"] == 0, failures[:5]
    assert counts["valid"] > CLIENTS and counts["invalid"] > 0
    # after the warm-up phase the resting RSS must stay flat: a leak grows it phase after phase
    warm, final = idle_rss[1], idle_rss[-1]
    assert final - warm < 48, [round(v) for v in idle_rss]
