"""Discussions end to end: gunicorn (2 workers), PostgreSQL, Redis, fake LLM, WebSocket clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.service.api import User, create_discussion, new_user, read_events, wait_finished, ws_ticket, ws_url
from tests.service.stack import (
    ORIGIN,
    FakeLlm,
    Service,
    running_service,
    service_env,
    wait_until,
)

pytestmark = pytest.mark.integration
PANEL = ["fundamentals", "bull", "bear"]


def assert_contiguous(events: list[dict[str, Any]], start: int = 1) -> None:
    assert [e["seq"] for e in events] == list(range(start, start + len(events)))


def test_three_agents_and_moderator_stream_to_completion(client: httpx.Client, service: Service, user: User) -> None:
    discussion = create_discussion(client, user, "Buy ACME? [[fake:delay=0.02,words=15,reasoning=3]]", PANEL)
    events = read_events(service, client, user, discussion)
    assert_contiguous(events)
    started = [e["role"] for e in events if e["type"] == "agent_started"]
    assert started == [*PANEL, "moderator"]
    completed = [e["message"] for e in events if e["type"] == "message_completed"]
    assert [m["turn_index"] for m in completed] == [0, 1, 2, 3]
    for message in completed:  # token batches add up to exactly the persisted message
        tokens = "".join(e["text"] for e in events if e["type"] == "token" and e["turn_index"] == message["turn_index"])
        assert tokens == message["content"]
    assert events[-1]["status"] == "completed"
    assert events[-1]["verdict"]["stance"] in ("bullish", "bearish", "neutral")

    detail = client.get(f"/api/discussions/{discussion}", headers=user.headers).json()
    assert detail["status"] == "completed" and detail["verdict"] == events[-1]["verdict"]
    assert [m["content"] for m in detail["messages"]] == [m["content"] for m in completed]
    assert all(len(m["reasoning"].split()) == 3 for m in detail["messages"])  # DeepSeek reasoning_content kept
    usage = client.get("/api/usage", headers=user.headers).json()
    assert usage["turns"] == 4 and usage["completion_tokens"] > 0
    assert usage["cache_hit_tokens"] > 0  # agents share the system prompt + transcript prefix


def test_reconnect_with_after_loses_nothing_and_doubles_nothing(
    client: httpx.Client, service: Service, user: User
) -> None:
    discussion = create_discussion(client, user, "Reconnect [[fake:delay=0.03,words=20]]", PANEL)
    first = read_events(service, client, user, discussion, until=lambda e: e["type"] == "message_completed")
    rest = read_events(service, client, user, discussion, after=first[-1]["seq"])
    assert_contiguous(first + rest)
    replay = read_events(service, client, user, discussion)  # a late client gets the whole log
    assert replay == first + rest


def test_ws_ticket_is_single_use_and_origin_is_checked(client: httpx.Client, service: Service, user: User) -> None:
    discussion = create_discussion(client, user, "Tickets [[fake:words=3]]", ["risk"])
    ticket = ws_ticket(client, user, discussion)
    with connect(ws_url(service, discussion, ticket), origin=Origin(ORIGIN), proxy=None) as ws:
        assert ws.recv(timeout=10)
    with pytest.raises(InvalidStatus), connect(ws_url(service, discussion, ticket), proxy=None):
        pass  # reused ticket
    fresh = ws_ticket(client, user, discussion)
    with (
        pytest.raises(InvalidStatus),
        connect(ws_url(service, discussion, fresh), origin=Origin("http://evil.test"), proxy=None),
    ):
        pass
    wait_finished(client, user, discussion)


def test_stop_closes_upstream_and_keeps_the_partial_message(
    client: httpx.Client, service: Service, user: User, fake_llm: FakeLlm
) -> None:
    discussion = create_discussion(client, user, "Stop me [[fake:delay=0.1,words=60]]", PANEL, rounds=3)
    seen = read_events(service, client, user, discussion, until=lambda e: e["type"] == "token")
    assert client.post(f"/api/discussions/{discussion}/stop", headers=user.headers).status_code == 202
    rest = read_events(service, client, user, discussion, after=seen[-1]["seq"], timeout=15)
    assert rest[-1]["status"] == "stopped"
    detail = wait_finished(client, user, discussion)
    assert detail["status"] == "stopped"
    (partial,) = detail["messages"]
    assert partial["status"] == "stopped" and 0 < len(partial["content"].split()) < 60
    wait_until(lambda: fake_llm.stats()["active"] == 0, 5, "the upstream stream to be closed")


def test_agent_timeout_fails_one_turn_and_the_discussion_goes_on(
    client: httpx.Client, service: Service, user: User
) -> None:
    # Only the Bear's request stalls (with keep-alives) longer than AGENT_TIMEOUT=4 s.
    discussion = create_discussion(client, user, "Timeouts [[fake:words=5,stall_mid=30,only=Bear]]", PANEL)
    events = read_events(service, client, user, discussion)
    failed = [e["message"] for e in events if e["type"] == "agent_failed"]
    assert [m["role"] for m in failed] == ["bear"] and "AGENT_TIMEOUT" in failed[0]["error"]
    assert events[-1]["status"] == "completed"
    statuses = [m["status"] for m in wait_finished(client, user, discussion)["messages"]]
    assert statuses == ["completed", "completed", "failed", "completed"]


@pytest.fixture(scope="module")
def short_workflow_service(
    database_url: str, redis_prefix: str, fake_llm: FakeLlm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("wf")
    with running_service(
        service_env(database_url, redis_prefix, fake_llm, tmp, WORKFLOW_TIMEOUT="2"), tmp / "log"
    ) as svc:
        yield svc


def test_workflow_timeout_ends_the_discussion(short_workflow_service: Service) -> None:
    with httpx.Client(base_url=short_workflow_service.url, timeout=30) as client:
        user = new_user(client)
        discussion = create_discussion(client, user, "Slow [[fake:delay=0.2,words=30]]", PANEL)
        detail = wait_finished(client, user, discussion, timeout=20)
    assert detail["status"] == "timed_out"
    assert detail["messages"][-1]["error"] == "WORKFLOW_TIMEOUT reached"


def test_many_websocket_clients_of_one_discussion_all_get_the_same_log(
    client: httpx.Client, service: Service, user: User
) -> None:
    clients = 150  # more simultaneous handshakes than one Redis pool's 100 connections
    discussion = create_discussion(client, user, "Crowd [[fake:stall_first=3,words=40,delay=0.01]]", ["risk"])
    tickets = [ws_ticket(client, user, discussion) for _ in range(clients)]

    async def listen(ticket: str) -> list[dict[str, Any]]:
        events = []
        url = ws_url(service, discussion, ticket)
        async with websockets.connect(url, origin=Origin(ORIGIN), open_timeout=30) as ws:
            async for raw in ws:
                events.append(json.loads(raw))
        return events

    async def crowd() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(*(listen(t) for t in tickets))

    logs = asyncio.run(crowd())
    assert logs[0][-1]["type"] == "discussion_finished"
    assert_contiguous(logs[0])
    assert all(log == logs[0] for log in logs)


def test_rounds_and_token_budget_limit_the_discussion(client: httpx.Client, user: User) -> None:
    two_rounds = create_discussion(client, user, "Rounds [[fake:words=4]]", ["bull", "bear"], rounds=2)
    roles = [m["role"] for m in wait_finished(client, user, two_rounds)["messages"]]
    assert roles == ["bull", "bear", "bull", "bear", "moderator"]

    body = {"topic": "Budget [[fake:words=4]]", "panel": ["bull", "bear"], "max_rounds": 3, "token_budget": 100}
    response = client.post("/api/discussions", json=body, headers=user.headers)
    assert response.status_code == 201
    # The first turn's prompt alone spends the budget: the moderator closes right after it.
    detail = wait_finished(client, user, response.json()["id"])
    assert [(m["turn_index"], m["role"]) for m in detail["messages"]] == [(0, "bull"), (6, "moderator")]
    assert detail["status"] == "completed" and detail["tokens_used"] >= 100
