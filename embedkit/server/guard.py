"""The ASGI layer in front of the routes: API key, body size and body time, before anything is parsed.

A refused request costs no JSON parsing and no memory beyond the server's body limit; its answer
comes from the one error table (embedkit.server.errors) like every other.
"""

from __future__ import annotations

import asyncio
import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedkit.server.errors import error_response
from embedkit.server.settings import ServerSettings

__all__ = ["OPEN_PATHS", "Guard"]

# answered without the API key: probes, metrics scrapers and the schema
OPEN_PATHS = ("/health", "/ping", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect")


class Guard:
    """ASGI middleware: API key and body size (and the time to send it), answered before FastAPI parses anything."""

    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.settings = settings
        self._expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self._expected is not None and path not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):  # constant time; the key is never logged
                await error_response(path, "Unauthorized", "missing or wrong API key")(scope, receive, send)
                return
        limit = self.settings.payload_limit
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(path, scope, receive, send)
            return
        body, more = bytearray(), True
        deadline = asyncio.get_running_loop().time() + self.settings.body_timeout
        while more:
            try:
                # a client trickling its body must not hold a connection (and its memory) for ever
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                message_text = f"request body not received within {self.settings.body_timeout:g} s"
                await error_response(path, "Timeout", message_text)(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await self._too_large(path, scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body is larger than the server's limit of {self.settings.payload_limit} bytes"
        await error_response(path, "PayloadTooLarge", message)(scope, receive, send)
