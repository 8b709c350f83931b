"""One AsyncTEIClient on many event loops, against the scripted TEI server on 127.0.0.1.

httpx's connections belong to the loop that opened them; the client keeps one pool per loop. The real
`embedkit serve` runs the same scenarios in tests/server/test_client_twins.py.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from embedkit import AsyncTEIClient, InputError, TEIClient
from embedkit.remote import RetryPolicy

from .conftest import ScriptedServer

FAST = RetryPolicy(backoff=0.01, max_backoff=0.05)
TEXTS = [f"text {i}" for i in range(6)]


def test_loops_in_threads_at_once_each_get_their_own_connections(scripted: ScriptedServer) -> None:
    client = AsyncTEIClient(scripted.url, retry=FAST)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(n: int) -> None:
        async def run() -> np.ndarray:
            start.wait()  # every thread's loop uses the client at the same moment
            return await client.embed(TEXTS)

        try:
            results[n] = asyncio.run(run())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and len(results) == 4
    for vectors in results.values():
        np.testing.assert_allclose(vectors, results[0])
    # each loop waits on its own lock, so loops racing may each read /info (harmless: it does not change)
    assert 1 <= [path for path, _ in scripted.requests].count("/info") <= 4


def test_aclose_closes_this_loops_connections_and_the_client_stays_usable(scripted: ScriptedServer) -> None:
    client = AsyncTEIClient(scripted.url, retry=FAST)

    async def run() -> np.ndarray:
        async with client:
            first = await client.embed(TEXTS)
        np.testing.assert_allclose(await client.embed(TEXTS), first)  # reconnects after aclose()
        await client.aclose()
        return first

    first = asyncio.run(run())
    np.testing.assert_allclose(asyncio.run(client.embed(TEXTS)), first)


def test_from_client_takes_only_embedkit_clients() -> None:
    with pytest.raises(InputError, match=r"AsyncTEIClient.from_client needs a TEIClient or an AsyncTEIClient"):
        AsyncTEIClient.from_client("http://127.0.0.1:9")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"TEIClient.from_client needs"):
        TEIClient.from_client(object())  # type: ignore[arg-type]
