"""CORS only where there is an origin to answer: Starlette's CORSMiddleware for requests that carry an
`Origin` header, a plain pass-through (plus `Vary: Origin`) for the rest.

Same-origin page loads, curl, health checks and most of the site's GETs send no `Origin`, yet Starlette's
middleware parses every request's headers and rewrites every response's; skipping it there saved about
a quarter of a cheap route's in-process CPU (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

VARY_ORIGIN = (b"vary", b"Origin")


class CrossOriginOnly:
    def __init__(
        self,
        app: ASGIApp,
        allow_origins: Sequence[str],
        allow_methods: Sequence[str],
        allow_headers: Sequence[str],
        expose_headers: Sequence[str],
        allow_credentials: bool,
    ) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=allow_origins,
            allow_methods=allow_methods,
            allow_headers=allow_headers,
            expose_headers=expose_headers,
            allow_credentials=allow_credentials,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(name == b"origin" for name, _ in scope["headers"]):
            await self.cors(scope, receive, send)
            return

        async def send_with_vary(message: Message) -> None:
            # An answer without CORS headers must not be reused from a cache for a cross-origin request.
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), VARY_ORIGIN]
            await send(message)

        await self.app(scope, receive, send_with_vary)
