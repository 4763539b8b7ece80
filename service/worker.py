"""The gunicorn worker class: uvicorn's, plus a WebSocket drain before uvicorn closes connections."""

from __future__ import annotations

import socket
import sys

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker  # type: ignore[import-untyped]

from service.drain import Drain

DRAIN_CLOSE_TIMEOUT_SECONDS = 3.0  # beyond the grace period: time for the hints and close frames to go out


class _DrainingServer(Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new connections while the WebSockets drain
        drain = getattr(getattr(self.config.app, "state", None), "drain", None)
        if isinstance(drain, Drain):
            await drain.run(DRAIN_CLOSE_TIMEOUT_SECONDS)
        await super().shutdown(sockets)


class DrainingUvicornWorker(UvicornWorker):  # type: ignore[misc]
    async def _serve(self) -> None:
        # uvicorn_worker's _serve, with the draining server.
        self.config.app = self.wsgi
        server = _DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
