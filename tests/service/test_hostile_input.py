"""Integers outside what the API can serve get a 422 or a clean WebSocket close, never a 500 or a silent socket."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Origin

from service.api.routes.ws import MAX_SEQ
from tests.service.api import User, create_discussion, read_events, wait_finished, ws_ticket, ws_url
from tests.service.stack import ORIGIN, Service

pytestmark = pytest.mark.integration


def closing(
    service: Service, client: httpx.Client, user: User, discussion: str, after: int
) -> tuple[list[str], int, str]:
    """What a socket opened with `after` receives before the server closes it, the close code and reason."""
    received: list[str] = []
    with connect(ws_url(service, discussion, ws_ticket(client, user, discussion), after), origin=Origin(ORIGIN)) as ws:
        try:
            while True:
                received.append(str(ws.recv(timeout=10)))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "the server closed without a close frame"
            return received, closed.rcvd.code, closed.rcvd.reason
    raise AssertionError("unreachable")


@pytest.mark.parametrize("query", ["offset=9223372036854775808", "offset=1000001", "offset=-1", "limit=101"])
def test_list_paging_out_of_range_is_422(client: httpx.Client, user: User, query: str) -> None:
    response = client.get(f"/api/discussions?{query}", headers=user.headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][-1] == query.split("=")[0]


@pytest.mark.parametrize("after", [2**64, 2**63, MAX_SEQ + 1, -1])
def test_after_out_of_range_closes_1008(client: httpx.Client, service: Service, user: User, after: int) -> None:
    discussion = create_discussion(client, user, "Bounds [[fake:words=3]]", ["bull"])
    received, code, reason = closing(service, client, user, discussion, after)
    assert (received, code) == ([], 1008) and reason.startswith("after: "), reason


def test_reconnect_past_the_end_of_a_finished_discussion_gets_the_final_event(
    client: httpx.Client, service: Service, user: User
) -> None:
    discussion = create_discussion(client, user, "Finished [[fake:words=3]]", ["bull"])
    events = read_events(service, client, user, discussion)
    final = events[-1]
    for after in (final["seq"], final["seq"] + 50, MAX_SEQ):
        received, code, _ = closing(service, client, user, discussion, after)
        assert ([json.loads(r) for r in received], code) == ([final], 1000)


def test_after_past_the_last_event_of_a_running_discussion_closes_1008(
    client: httpx.Client, service: Service, user: User
) -> None:
    discussion = create_discussion(client, user, "Running [[fake:delay=0.2,words=40]]", ["bull", "bear"])
    first = read_events(service, client, user, discussion, until=lambda e: e["type"] == "token")
    received, code, reason = closing(service, client, user, discussion, first[-1]["seq"] + 10_000)
    assert (received, code) == ([], 1008) and "past the last event" in reason
    client.post(f"/api/discussions/{discussion}/stop", headers=user.headers)
    wait_finished(client, user, discussion)
