"""`embedkit serve` started as a real process on 127.0.0.1, as users start it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key-6f1d"  # a test value; the server must never echo it


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(log_dir: Path, *args: str, api_key: str | None = API_KEY) -> RunningServer:
    exe = shutil.which("embedkit", path=str(Path(sys.executable).parent))
    assert exe, f"the embedkit console script is installed beside {sys.executable}"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "EMBEDKIT_API_KEY"}
    if api_key:
        env["EMBEDKIT_API_KEY"] = api_key
    log_path = log_dir / f"serve-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [exe, "serve", "--port", str(port), *args], stdout=log, stderr=subprocess.STDOUT, env=env, text=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"embedkit serve exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return RunningServer(url, process, log_path)
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"embedkit serve did not become healthy:\n{log_path.read_text()}")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("serve"), "--max-client-batch-size", "8")
    yield running
    stop_server(running)


RERANK_BATCH = 4  # the reranker server's --max-client-batch-size


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT cross-encoder, as sentence-transformers saves one."""
    from ..conftest import write_tiny_cross_encoder

    return write_tiny_cross_encoder(tmp_path_factory.mktemp("rerank-serve") / "model", seed=3)


@pytest.fixture(scope="session")
def rerank_server(tmp_path_factory: pytest.TempPathFactory, cross_encoder_dir: Path) -> Iterator[RunningServer]:
    """`embedkit serve` of the tiny cross-encoder (torch on the CPU), RERANK_BATCH texts a request."""
    running = start_server(
        tmp_path_factory.mktemp("serve-rerank"),
        str(cross_encoder_dir),
        *("--backend", "torch", "--device", "cpu", "--max-client-batch-size", str(RERANK_BATCH)),
    )
    yield running
    stop_server(running)


@pytest.fixture()
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def post(server: RunningServer, path: str, body: object, *, timeout: float = 60) -> httpx.Response:
    """POST `body` as JSON with the API key. Encoded here with json.dumps (ASCII escapes), so a lone
    surrogate travels as JSON's "\\ud800", as clients that send one do; httpx's own encoder would refuse it."""
    return httpx.post(
        f"{server.url}{path}",
        content=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        timeout=timeout,
    )


def assert_tei_error(response: httpx.Response, status: int, error_type: str) -> str:
    """The response is TEI's error body for `error_type` with `status` (the OpenAI-route shape on its
    paths), and `status` is what the server's one table gives that type; returns the message."""
    from embedkit.server.errors import ERROR_STATUS, OPENAI_ERROR_PATHS

    assert response.status_code == status, response.text
    assert ERROR_STATUS[error_type] == status
    assert response.headers["content-type"] == "application/json", response.headers
    body = response.json()
    if response.url.path in OPENAI_ERROR_PATHS:
        assert set(body) == {"message", "code", "type"}, body
        assert (body["code"], body["type"]) == (status, error_type), body
        message = body["message"]
    else:
        assert set(body) == {"error", "error_type"}, body
        assert body["error_type"] == error_type, body
        message = body["error"]
    assert isinstance(message, str) and message, body
    assert API_KEY not in response.text
    return message
