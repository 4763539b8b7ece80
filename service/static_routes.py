"""GET routes whose answer never changes, served from bytes made once, ahead of FastAPI's router.

FastAPI's per-request work (route matching over every route, dependency solving, response encoding)
is most of the CPU a cheap route costs (bench/README.md). A route listed here is still declared in
FastAPI, so it is in the OpenAPI schema; its GETs are answered here, after the request-id/log/metrics
and CORS middleware, so they are logged, counted and CORS-checked like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass(frozen=True)
class StaticRoute:
    path: str  # the route template, as the duration metric reads it from scope["route"]


class StaticRoutes:
    def __init__(self, app: ASGIApp, json_bodies: Mapping[str, bytes]) -> None:
        self.app = app
        self._answers = {
            path: (
                StaticRoute(path),
                [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                body,
            )
            for path, body in json_bodies.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self._answers.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "GET" else None
        if answer is None:
            await self.app(scope, receive, send)
            return
        route, headers, body = answer
        scope["route"] = route
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
        await send({"type": "http.response.body", "body": body})
