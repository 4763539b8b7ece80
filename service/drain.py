"""A worker's graceful shutdown as its WebSockets see it: a signal, a grace period, then a reconnect hint.

`service.worker` calls `Drain.run()` when gunicorn stops the worker (SIGTERM during a deploy drain,
HUP, max_requests), before uvicorn closes any connection. Each open WebSocket keeps streaming for
`grace_seconds`, then gets `{"type": "reconnect", "after_ms": N}` and close code 1012 (service restart).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

CLOSE_CODE = 1012  # RFC 6455 "service restart"
CLOSE_REASON = "service restart; reconnect with ?after=<last seq>"
# Clients wait a random 0.5-2.5 s before reconnecting, so a thousand of them do not arrive at once.
RECONNECT_AFTER_MS = (500, 2500)


class Drain:
    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.started = asyncio.Event()
        self._open = 0
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Count one open WebSocket for as long as the block runs."""
        self._open += 1
        self._all_closed.clear()
        try:
            yield
        finally:
            self._open -= 1
            if self._open == 0:
                self._all_closed.set()

    async def grace_over(self) -> None:
        """Return once a drain has started and its grace period has passed."""
        await self.started.wait()
        await asyncio.sleep(self.grace_seconds)

    @staticmethod
    def hint() -> dict[str, Any]:
        return {"type": "reconnect", "after_ms": random.randint(*RECONNECT_AFTER_MS)}

    async def run(self, close_timeout: float) -> None:
        """Start the drain and wait until every WebSocket has closed (at most grace + close_timeout)."""
        self.started.set()
        with suppress(TimeoutError):  # uvicorn's own shutdown then closes what is left
            await asyncio.wait_for(self._all_closed.wait(), self.grace_seconds + close_timeout)
