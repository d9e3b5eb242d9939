"""The run's auth string on every route of the embedded API's app, not only under ``/api``.

Prefect checks ``server.api.auth_string`` in its API app (mounted at ``/api``), but the
app around it also serves ``/docs``, ``/redoc`` and ``/openapi.json`` (every route and
schema of the API), to anyone. :class:`RequireAuth` wraps the whole app: an HTTP
request needs the auth string (HTTP basic, as Prefect's clients send it) whatever its
path, but for ``GET /api/health`` and ``GET /api/ready``, which answer anyone, as
Prefect has them. Websockets under ``/api/`` authenticate inside their protocol, as
Prefect's own do; any other websocket is refused.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any, Awaitable, Callable

#: Routes that answer without the auth string (``GET`` only), as in Prefect's API app.
OPEN_ROUTES = frozenset({"/api/health", "/api/ready"})

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def authorized(scope: Scope, auth_string: str) -> bool:
    """Whether an HTTP request carries ``auth_string`` as its basic credentials."""
    headers = dict(scope.get("headers") or [])
    value = headers.get(b"authorization", b"")
    scheme, _, credentials = value.partition(b" ")
    if scheme.lower() != b"basic":
        return False
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(decoded, auth_string.encode())


class RequireAuth:
    """ASGI middleware: the run's auth string on every route but :data:`OPEN_ROUTES`."""

    def __init__(self, app: Any, auth_string: str) -> None:
        if not auth_string:
            raise ValueError("the embedded API needs an auth string")
        self.app = app
        self.auth_string = auth_string

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            open_route = scope["path"] in OPEN_ROUTES and scope["method"] == "GET"
            if not open_route and not authorized(scope, self.auth_string):
                await _unauthorized(send)
                return
        elif kind == "websocket" and not scope["path"].startswith("/api/"):
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)


async def _unauthorized(send: Send) -> None:
    body = json.dumps({"exception_message": "Unauthorized"}).encode()
    await send({
        "type": "http.response.start",
        "status": 401,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
