"""Baseline for the HTTP benchmark: the same JSON as /api/roles from a bare ASGI app, no middleware."""

from __future__ import annotations

import json

from starlette.types import Receive, Scope, Send

from service.agents.presets import ROLES

BODY = json.dumps([{"key": r.key, "name": r.name, "instructions": r.instructions} for r in ROLES.values()]).encode()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})
