"""The two shells mirror each other, and the flows they drive decide everything without any I/O.

No network here: the method sets are compared by inspection, and the retry / split flows are driven by
hand, a step at a time, as TEIClient and AsyncTEIClient drive them.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Generator
from typing import Any

import httpx
import numpy as np
import pytest

from embedkit import AsyncTEIClient, InputError, RemoteError, TEIClient
from embedkit.remote import ClientSettings, RetryPolicy
from embedkit.remote.flow import Sleep, checked, embed_batch, retried
from embedkit.remote.models import Answer, Batch, Options
from embedkit.remote.status import Outcome, outcome

# as httpx: Client.close / AsyncClient.aclose; every other public name is shared
LIFECYCLE = {"close": "aclose"}
AWAITED = {"method": "async method", "iterator": "async iterator"}


def public_members(cls: type) -> dict[str, str]:
    """Each public name of the class -> what it is: property, classmethod, (async) method, (async) iterator."""
    members = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, property):
            kind = "property"
        elif isinstance(attr, classmethod):
            kind = "classmethod"
        elif inspect.iscoroutinefunction(attr):
            kind = "async method"
        elif inspect.isasyncgenfunction(attr):
            kind = "async iterator"
        elif inspect.isgeneratorfunction(attr):
            kind = "iterator"
        elif callable(attr):
            kind = "method"
        else:
            kind = "attribute"
        members[name] = kind
    return members


def test_both_shells_have_the_same_methods_the_async_ones_awaitable() -> None:
    sync, asynchronous = public_members(TEIClient), public_members(AsyncTEIClient)
    expected = {LIFECYCLE.get(name, name): AWAITED.get(kind, kind) for name, kind in sync.items()}
    assert sorted(asynchronous.items()) == sorted(expected.items())
    wanted = {
        "tokenize",
        "count_tokens",
        "input_overhead",
        "prompt_text",
        "info",
        "health",
        "embed",
        "embed_query",
        "embed_documents",
        "embed_iter",
        "probe_dimension",
    }
    assert {name: sync[name] for name in wanted} == {name: "method" for name in wanted} | {"embed_iter": "iterator"}
    assert {name: asynchronous[name] for name in wanted} == {name: "async method" for name in wanted} | {
        "embed_iter": "async iterator"
    }


def test_the_mirrored_methods_take_the_same_arguments() -> None:
    for name, kind in public_members(TEIClient).items():
        if kind in ("property", "attribute") or name == "from_client":
            continue
        mirrored = getattr(AsyncTEIClient, LIFECYCLE.get(name, name))
        ours = [(p.name, p.kind, p.default) for p in inspect.signature(getattr(TEIClient, name)).parameters.values()]
        theirs = [(p.name, p.kind, p.default) for p in inspect.signature(mirrored).parameters.values()]
        assert ours == theirs, name


# -- the status table -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (200, "", None),
        (429, "overloaded", Outcome.RETRY),
        (503, "unhealthy", Outcome.RETRY),
        (413, "length limit exceeded", Outcome.SPLIT),
        (422, "batch size 8 > maximum allowed batch size 4", Outcome.SPLIT),
        (422, "`inputs` must have less than 256 tokens", Outcome.INPUT),
        (400, "empty", Outcome.INPUT),
        (401, "bad key", Outcome.AUTH),
        (403, "forbidden", Outcome.AUTH),
        (404, "not here", Outcome.FAIL),
        (500, "panic", Outcome.FAIL),
    ],
)
def test_one_status_table(status: int, message: str, expected: Outcome | None) -> None:
    assert outcome(status, message) == expected


# -- flows, driven by hand --------------------------------------------------------------------------------

SETTINGS = ClientSettings("http://tei.test", retry=RetryPolicy(attempts=3, backoff=1.0, max_backoff=8.0))


def answer(request: httpx.Request, status: int, body: Any, headers: dict[str, str] | None = None) -> Answer:
    raw = body if isinstance(body, bytes) else httpx.Response(200, json=body).content
    return Answer(httpx.Response(status, headers=headers, request=request), raw)


read_text = checked(SETTINGS, lambda answer, body: body.decode())  # the status table, then the body


def request() -> httpx.Request:
    return httpx.Request("POST", "http://tei.test/embed")


def test_retried_yields_requests_and_sleeps_and_returns_the_answer() -> None:
    flow = retried(SETTINGS, request, read_text, clock=lambda: 0.0, jitter=lambda: 0.5)
    sent = next(flow)
    assert isinstance(sent, httpx.Request)
    assert flow.send(answer(sent, 503, {"error": "busy"})) == Sleep(1.5)  # backoff * 2**0 + half a backoff
    sent = flow.send(None)
    assert flow.send(answer(sent, 503, {"error": "busy"}, {"Retry-After": "3"})) == Sleep(3.0)  # the server's
    sent = flow.send(None)
    with pytest.raises(StopIteration) as done:
        flow.send(answer(sent, 200, b"ok"))
    assert done.value.value == "ok"


def test_retried_gives_up_after_the_attempts_or_the_time_budget() -> None:
    flow = retried(SETTINGS, request, read_text, clock=lambda: 0.0, jitter=lambda: 0.0)
    sent = next(flow)
    for _ in range(2):
        assert isinstance(flow.send(httpx.ConnectError("refused", request=sent)), Sleep)
        sent = flow.send(None)
    with pytest.raises(RemoteError, match=r"gave up after 3 attempt\(s\).*failed: ConnectError"):
        flow.send(httpx.ConnectError("refused", request=sent))
    slow = ClientSettings("http://tei.test", retry=RetryPolicy(attempts=50, total_seconds=2.0))
    times = iter([0.0, 1.5])  # the first attempt starts at 0; after it fails, 1.5 s have gone by
    flow = retried(slow, request, read_text, clock=lambda: next(times), jitter=lambda: 0.0)
    sent = next(flow)
    with pytest.raises(RemoteError, match=r"gave up after 1 attempt") as caught:
        flow.send(answer(sent, 503, {"error": "busy"}, {"Retry-After": "1"}))  # would end at 2.5 s > 2 s
    assert caught.value.status == 503


def drive(flow: Generator, respond: Any) -> Any:
    """What a shell does, with `respond(request) -> Answer` in place of the network and no real sleeps."""
    reply = None
    while True:
        try:
            step = flow.send(reply)
        except StopIteration as done:
            return done.value
        reply = None if isinstance(step, Sleep) else respond(step)


def test_a_refused_batch_is_split_depth_first_and_keeps_its_order() -> None:
    texts = [f"t{i}" for i in range(5)]
    batch = Batch(list(range(5)), list(texts), Options(None, "", None, True, "right"))
    sizes = []

    def build(part: Batch) -> httpx.Request:
        return httpx.Request("POST", "http://tei.test/embed", json={"inputs": part.texts})

    def respond(sent: httpx.Request) -> Answer:
        inputs = json.loads(sent.content)["inputs"]
        sizes.append(len(inputs))
        if len(inputs) > 2:
            return answer(sent, 413, b"length limit exceeded")
        return answer(sent, 200, [[float(text[1:]), 1.0] for text in inputs])

    def read(got: Answer, body: bytes, part: Batch) -> np.ndarray:
        return np.asarray(json.loads(body), dtype=np.float32)

    vectors = drive(embed_batch(SETTINGS, batch, build, read), respond)
    assert sizes == [5, 3, 2, 1, 2]  # halves of 5 are 3 and 2; 3 again splits into 2 and 1
    np.testing.assert_array_equal(vectors[:, 0], [0, 1, 2, 3, 4])
    alone = Batch([7], ["t7"], batch.options)
    with pytest.raises(InputError, match=r"texts\[7\] is too large for the server even alone") as caught:
        drive(embed_batch(SETTINGS, alone, build, read), lambda sent: answer(sent, 413, b"too large"))
    assert caught.value.index == 7


def test_the_synchronous_chunker_refuses_an_async_client() -> None:
    """Its count_tokens / input_overhead are coroutines: a Chunker must be given the sync twin."""
    from embedkit.chunking import Chunker

    with pytest.raises(InputError, match="got AsyncTEIClient"):
        Chunker(AsyncTEIClient("http://tei.test"))
    Chunker(TEIClient.from_client(AsyncTEIClient("http://tei.test")))  # sends nothing until the first split
