"""The client's real address, as the site's nginx saw it, for rate limits and logs.

nginx sets `X-Real-IP: $remote_addr` on every request it passes on. The API believes that header only from
a trusted proxy: an address or network, or a host name such as `nginx-internal` (nginx's alias on the
network it reaches the API by), which is resolved again when a request comes from an address not trusted yet:
nginx's container address changes when Compose recreates it, and a resolution made at start would then trust
nobody (or, worse, a stranger). From anyone else the header is ignored and the connection's own address
stands. Nothing is trusted by default; `*` is refused, since it would let every client choose its own address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
REAL_IP = b"x-real-ip"


def parse_trusted(entries: Sequence[str]) -> tuple[tuple[Network, ...], tuple[str, ...]]:
    """Addresses/networks and host names from TRUSTED_PROXIES; a ValueError names a bad entry."""
    networks: list[Network] = []
    names: list[str] = []
    for entry in entries:
        if entry == "*":
            raise ValueError("TRUSTED_PROXIES='*' would let every client pick its own address: name the proxy")
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if not entry.replace("-", "").replace(".", "").isalnum():
                raise ValueError(
                    f"TRUSTED_PROXIES entry {entry!r} is neither an address, a network nor a host name"
                ) from None
            names.append(entry)
    return tuple(networks), tuple(names)


class ClientAddress:
    """Pure ASGI middleware: the client of an http/websocket scope becomes X-Real-IP when a trusted proxy sent it."""

    def __init__(self, app: ASGIApp, trusted: Sequence[str], refresh_seconds: float = 1.0) -> None:
        self.app = app
        self._networks, self._names = parse_trusted(trusted)
        self._refresh_seconds = refresh_seconds
        self._resolved: frozenset[str] = frozenset()
        self._resolved_at = float("-inf")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and (self._networks or self._names):
            peer = scope.get("client")
            if peer and await self._trusted(peer[0]):
                real = next((value for name, value in scope["headers"] if name == REAL_IP), None)
                address = _address(real)
                if address is not None:
                    scope = {**scope, "client": (address, 0)}
        await self.app(scope, receive, send)

    async def _trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if any(address in network for network in self._networks):
            return True
        if not self._names:
            return False
        if peer not in self._resolved and time.monotonic() - self._resolved_at > self._refresh_seconds:
            self._resolved = await self._resolve()
            self._resolved_at = time.monotonic()
        return peer in self._resolved

    async def _resolve(self) -> frozenset[str]:
        loop = asyncio.get_running_loop()
        found: set[str] = set()
        for name in self._names:
            try:
                answers = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except OSError:
                continue  # not resolvable now (the proxy is being recreated): trust nobody by that name
            found.update(str(answer[4][0]) for answer in answers)
        return frozenset(found)


def _address(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return str(ipaddress.ip_address(raw.decode("latin-1").strip()))
    except ValueError:
        return None
