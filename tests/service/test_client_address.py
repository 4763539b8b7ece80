"""The client address the API believes: nginx's X-Real-IP from a trusted proxy only."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.client_address import ClientAddress, parse_trusted

pytestmark = pytest.mark.unit


def seen_client(trusted: list[str], peer: str, real_ip: str | None) -> Any:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["client"] = scope["client"]

    headers = [(b"x-real-ip", real_ip.encode())] if real_ip is not None else []
    scope = {"type": "http", "client": (peer, 51234), "headers": headers}
    asyncio.run(ClientAddress(app, trusted)(scope, None, None))  # type: ignore[arg-type]
    return seen["client"]


def test_a_trusted_proxy_names_the_client() -> None:
    assert seen_client(["10.0.0.0/8"], "10.1.2.3", "203.0.113.7") == ("203.0.113.7", 0)
    assert seen_client(["10.1.2.3"], "10.1.2.3", "2001:db8::7") == ("2001:db8::7", 0)


def test_a_proxy_known_by_name_is_resolved() -> None:
    assert seen_client(["localhost"], "127.0.0.1", "203.0.113.7") == ("203.0.113.7", 0)


def test_anyone_else_keeps_their_own_address() -> None:
    assert seen_client(["10.0.0.0/8"], "198.51.100.9", "203.0.113.7") == ("198.51.100.9", 51234)
    assert seen_client([], "127.0.0.1", "203.0.113.7") == ("127.0.0.1", 51234)
    assert seen_client(["no-such-proxy.invalid"], "127.0.0.1", "203.0.113.7") == ("127.0.0.1", 51234)


def test_a_malformed_header_is_ignored() -> None:
    assert seen_client(["127.0.0.1"], "127.0.0.1", "203.0.113.7, 10.0.0.1") == ("127.0.0.1", 51234)
    assert seen_client(["127.0.0.1"], "127.0.0.1", None) == ("127.0.0.1", 51234)


def test_trusting_everyone_is_refused() -> None:
    with pytest.raises(ValueError, match="every client pick its own address"):
        parse_trusted(["*"])
    with pytest.raises(ValueError, match="neither an address"):
        parse_trusted(["nginx;rm"])
