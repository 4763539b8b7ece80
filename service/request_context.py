"""Per HTTP request: an id (accepted from / returned in X-Request-ID), a JSON log line, a duration metric.

This runs for every request, so it is a pure ASGI middleware kept cheap (see bench/README.md): the log
line is formatted directly (same keys as logging.JsonFormatter) and written in batches, and metric
children are looked up once per (method, route, status).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logging import request_id
from service.metrics import HTTP_REQUEST_DURATION

log = logging.getLogger("service.http")
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # also what makes it safe to put in JSON as is
# Methods are the client's choice; anything else is counted as "other" so labels stay bounded.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_json_text = functools.lru_cache(maxsize=512)(json.dumps)  # route templates and methods: a small set


def _request_ids() -> Iterator[str]:
    """Unique 32-hex-digit ids: a random half per process, a counter for the other; no syscall per request."""
    prefix = os.urandom(8).hex()
    return (f"{prefix}{n:016x}" for n in itertools.count(1))


class AccessLog:
    """Request log lines, written to stderr together at most `flush_seconds` after the first one.

    One write per batch instead of one per request; a batch is also written when it reaches
    `max_bytes` and at shutdown (`flush`). A SIGKILLed worker loses at most `flush_seconds` of lines.
    """

    def __init__(self, flush_seconds: float = 0.1, max_bytes: int = 64 * 1024) -> None:
        self._flush_seconds = flush_seconds
        self._max_bytes = max_bytes
        self._lines: list[str] = []
        self._size = 0
        self._second = -1
        self._second_text = ""

    def add(self, rid: str, client: str, method: str, route: str, status: int, seconds: float) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        # `client` is an IP address (the peer's, or one ClientAddress validated): nothing in it needs escaping.
        line = (
            f'{{"ts": "{self._second_text}.{int((now - second) * 1000):03d}Z", "level": "info",'
            f' "logger": "{log.name}", "msg": "request", "request_id": "{rid}", "client": "{client}",'
            f' "method": {_json_text(method)},'
            f' "route": {_json_text(route)}, "status": {status}, "duration_ms": {round(seconds * 1000, 2)}}}\n'
        )
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._max_bytes:
            self.flush()
        elif len(self._lines) == 1:
            asyncio.get_running_loop().call_later(self._flush_seconds, self.flush)

    def flush(self) -> None:
        if self._lines:
            text, self._lines, self._size = "".join(self._lines), [], 0
            sys.stderr.write(text)
            sys.stderr.flush()


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, access_log: AccessLog) -> None:
        self.app = app
        self.access_log = access_log
        self._observers: dict[tuple[str, str, int], Callable[[float], None]] = {}
        self._ids = _request_ids()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")
                break
        if not REQUEST_ID_PATTERN.match(rid):
            rid = next(self._ids)
        token = request_id.set(rid)
        started = time.perf_counter()
        status_code = 500
        id_header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            # The route template, never the raw path: ids in labels would explode cardinality.
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self._observe(method, route, status_code, elapsed)
            if log.isEnabledFor(logging.INFO):
                peer = scope.get("client")
                self.access_log.add(rid, peer[0] if peer else "", method, route, status_code, elapsed)
            request_id.reset(token)

    def _observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        observe = self._observers.get(key)
        if observe is None:
            observe = self._observers[key] = HTTP_REQUEST_DURATION.labels(method, route, str(status)).observe
        observe(seconds)
