"""Standby: a warm API that takes no traffic and runs no discussions until the deploy wakes it again.

The deploy keeps the previous release's API up for a while after a switch, so that a rollback is an nginx switch
instead of a cold start. The flag is one file (`STANDBY_FILE`), which the host creates and removes; every gunicorn
worker polls it, so each one enters and leaves standby by itself, and a worker that restarts meanwhile starts in
the state the file says. Entering: open WebSockets get the drain's reconnect hint and close 1012, the orchestrator
hands its discussions over (their leases expire, another release's reaper takes them) and claims none. Leaving:
the reaper runs again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from service.agents.orchestration import Orchestrator
from service.drain import Drain

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # how long a worker may take to notice the flag: well inside a rollback's seconds


class Standby:
    """Follows the flag file for one worker: its drain and its orchestrator go standby and wake with it."""

    def __init__(self, flag: Path, drain: Drain, orchestrator: Orchestrator) -> None:
        self.flag = flag
        self._drain = drain
        self._orchestrator = orchestrator
        self.active = False
        self._worker = {"fields": {"pid": os.getpid()}}  # which worker of the API, in its log line

    async def follow(self) -> None:
        """Poll the flag until cancelled; the first look happens at once, before the worker runs anything."""
        while True:
            wanted = self.flag.exists()
            if wanted and not self.active:
                await self._enter()
            elif not wanted and self.active:
                self._leave()
            await asyncio.sleep(POLL_SECONDS)

    async def _enter(self) -> None:
        self.active = True
        self._drain.started.set()  # each WebSocket streams its grace period, then gets the hint and 1012
        handed = await self._orchestrator.standby()
        log.info("standby: %d discussions handed over, claiming none until woken", handed, extra=self._worker)

    def _leave(self) -> None:
        self.active = False
        self._drain.started.clear()
        self._orchestrator.wake()
        log.info("standby over: running discussions again", extra=self._worker)
