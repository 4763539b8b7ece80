"""Baseline for the HTTP benchmark: the same JSON as /api/roles from a bare ASGI app, no middleware."""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from service.api.routes.discussions import ROLES_JSON as BODY


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})
