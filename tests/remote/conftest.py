"""A small TEI-shaped HTTP server on 127.0.0.1 that misbehaves on cue, counting every request it gets.

It stands in for a remote TEI failing in particular ways (the real `embedkit serve` is tested in
tests/server/). Each test scripts one behaviour: answers are plain TEI JSON; a vector is
[index in the text, length of the text, 1.0], so order and completeness are checkable.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

INFO = {
    "model_id": "sentence-transformers/all-MiniLM-L6-v2",
    "served_model_name": "sentence-transformers/all-MiniLM-L6-v2",
    "max_client_batch_size": 4,
    "max_input_length": 256,
    "max_batch_tokens": 16384,
    "version": "1.9.3",
}


def vector_of(text: str) -> list[float]:
    """Texts in these tests end with their index: 'text 7' -> [7, len, 1]."""
    return [float(text.rsplit(" ", 1)[-1]), float(len(text)), 1.0]


@dataclass
class Answer:
    status: int = 200
    body: object | bytes | None = None  # None: vectors for the inputs
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering
    delay: float = 0.0
    endless: bool = False  # a chunked body that never ends


Behaviour = Callable[[str, dict, int], Answer]  # (path, body, request number on this path) -> Answer


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hung up on a slow or dropped answer is part of the script


class ScriptedServer:
    def __init__(self) -> None:
        self.behaviour: Behaviour = lambda path, body, n: Answer()
        self.requests: list[tuple[str, dict]] = []
        self.info = dict(INFO)
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                outer._record(self.path, {})
                if self.path == "/info":
                    self._send(Answer(200, outer.info))
                else:
                    self._send(Answer(200, b""))

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                body["_authorization"] = self.headers.get("Authorization")
                number = outer._record(self.path, body)
                answer = outer.behaviour(self.path, body, number)
                if answer.body is None and answer.status == 200:
                    answer.body = [vector_of(text) for text in body["inputs"]]
                self._send(answer)

            def _send(self, answer: Answer) -> None:
                if answer.delay:
                    time.sleep(answer.delay)
                if answer.drop:
                    self.close_connection = True
                    self.connection.close()
                    return
                if answer.endless:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.close_connection = True
                    chunk = b"[" + b"0.5," * 2000
                    try:
                        while True:
                            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                            time.sleep(0.001)
                    except OSError:  # the client gave up, as it should
                        return
                raw = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def _record(self, path: str, body: dict) -> int:
        with self._lock:
            self.requests.append((path, body))
            return sum(1 for seen, _ in self.requests if seen == path)

    def bodies(self, path: str = "/embed") -> list[dict]:
        with self._lock:
            return [body for seen, body in self.requests if seen == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture()
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()
