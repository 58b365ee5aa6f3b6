"""ASGI middleware of `dmporec serve`: a body size limit (413) and an API key on /v1/ (401)."""

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

API_KEY_ENV = "DMPOREC_API_KEY"


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by its Content-Length header or, when
    that is missing or wrong (chunked uploads), by the bytes actually received."""

    def __init__(self, app: Callable, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"error": f"request body larger than {self.max_bytes} bytes"}, status_code=413
        )
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(scope, receive, send)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the app's root_path (uvicorn --root-path)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class ApiKey:
    """ASGI middleware: /v1/ routes need `Authorization: Bearer KEY` or `X-API-Key: KEY`
    (401 otherwise; compared in constant time). /, /healthz, /docs and /openapi.json stay open."""

    def __init__(self, app: Callable, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _route_path(scope).startswith("/v1/"):
            headers = dict(scope["headers"])
            given = headers.get(b"x-api-key", b"")
            bearer = headers.get(b"authorization", b"")
            if bearer[:7].lower() == b"bearer ":
                given = bearer[7:].strip()
            if not hmac.compare_digest(given, self.key):
                response = JSONResponse(
                    {"error": "missing or wrong API key (Authorization: Bearer KEY or X-API-Key)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
