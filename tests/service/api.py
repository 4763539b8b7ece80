"""The service's HTTP and WebSocket API as the tests drive it: a user signed up and logged in, a discussion
started, its events read and its end awaited."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.service.stack import ORIGIN, Service, wait_until


@dataclass
class User:
    email: str
    password: str
    headers: dict[str, str]
    refresh_token: str


def new_user(client: httpx.Client) -> User:
    email = f"u{secrets.token_hex(5)}@example.test"
    password = secrets.token_urlsafe(12)
    client.post("/api/auth/register", json={"email": email, "password": password}).raise_for_status()
    tokens = client.post("/api/auth/login", json={"email": email, "password": password}).json()
    return User(email, password, {"Authorization": f"Bearer {tokens['access_token']}"}, tokens["refresh_token"])


def ws_ticket(client: httpx.Client, user: User, discussion_id: str) -> str:
    response = client.post("/api/ws-ticket", json={"discussion_id": discussion_id}, headers=user.headers)
    response.raise_for_status()
    return str(response.json()["ticket"])


def ws_url(service: Service, discussion_id: str, ticket: str, after: int = 0) -> str:
    return f"ws://{service.url.removeprefix('http://')}/ws/discussions/{discussion_id}?ticket={ticket}&after={after}"


def read_events(
    service: Service,
    client: httpx.Client,
    user: User,
    discussion_id: str,
    after: int = 0,
    until: Callable[[dict[str, Any]], bool] = lambda e: e["type"] == "discussion_finished",
    timeout: float = 60,
) -> list[dict[str, Any]]:
    """Events from the WebSocket, from seq > after up to and including the first one matching `until`."""
    url = ws_url(service, discussion_id, ws_ticket(client, user, discussion_id), after)
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with connect(url, origin=Origin(ORIGIN), proxy=None) as ws:
        while True:
            event = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            events.append(event)
            if until(event):
                return events


def create_discussion(client: httpx.Client, user: User, topic: str, panel: list[str], rounds: int = 1) -> str:
    body = {"topic": topic, "panel": panel, "max_rounds": rounds}
    response = client.post("/api/discussions", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def wait_finished(client: httpx.Client, user: User, discussion_id: str, timeout: float = 60) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def finished() -> bool:
        found.update(client.get(f"/api/discussions/{discussion_id}", headers=user.headers).json())
        return found["status"] not in ("running", "stopping")

    wait_until(finished, timeout, f"discussion {discussion_id} to finish")
    return found
