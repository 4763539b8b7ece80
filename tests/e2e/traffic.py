"""Client traffic through the sandbox's nginx over TLS: users, discussions, WebSockets, a steady load."""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin


@dataclass(frozen=True)
class Site:
    """The appliance as a browser sees it: https://127.0.0.1:PORT, trusting the appliance's own CA.
    With `server_name` (a site whose certificate names its domain), the HTTP client still connects to
    127.0.0.1:PORT but sends that name as SNI and Host, and checks the certificate against it."""

    port: int
    ca_pem: str
    server_name: str | None = None

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem)

    def client(self) -> httpx.Client:
        if self.server_name is None:
            return httpx.Client(base_url=self.origin, verify=self.tls(), timeout=10)
        name = self.server_name

        def sni(request: httpx.Request) -> None:
            request.extensions["sni_hostname"] = name

        return httpx.Client(
            base_url=self.origin,
            verify=self.tls(),
            timeout=10,
            headers={"Host": name},
            event_hooks={"request": [sni]},
        )

    def new_user(self) -> dict[str, str]:
        """Register and log in a fresh user; the Authorization header for it."""
        return self.log_in(*self.register())

    def register(self) -> tuple[str, str]:
        """A fresh user's email and password, registered through the API."""
        email, password = f"u{secrets.token_hex(5)}@example.test", secrets.token_urlsafe(12)
        with self.client() as client:
            client.post("/api/auth/register", json={"email": email, "password": password}).raise_for_status()
        return email, password

    def log_in(self, email: str, password: str) -> dict[str, str]:
        """The Authorization header of a logged-in user."""
        answer = self.attempt_login(email, password)
        answer.raise_for_status()
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}

    def attempt_login(self, email: str, password: str) -> httpx.Response:
        """The API's answer to a login, after waiting out nginx's per-address login limit (one attempt per 3 s
        once an earlier test used the allowance up)."""
        deadline = time.monotonic() + 60
        with self.client() as client:
            while (
                answer := client.post("/api/auth/login", json={"email": email, "password": password})
            ).status_code == 429:
                assert time.monotonic() < deadline, answer.text
                time.sleep(3)
        return answer

    def use_up_login_allowance(self) -> None:
        """Wrong logins from this address until nginx's per-address limit answers 429."""
        attempt = {"email": "nobody@example.test", "password": "wrong-password-1"}
        with self.client() as client:
            answers = [client.post("/api/auth/login", json=attempt) for _ in range(30)]
        assert any(a.status_code == 429 and "nginx" in a.text for a in answers), [a.status_code for a in answers]

    def create_discussion(self, headers: dict[str, str], topic: str, panel: list[str]) -> str:
        with self.client() as client:
            body = {"topic": topic, "panel": panel, "max_rounds": 1}
            answer = client.post("/api/discussions", json=body, headers=headers)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    def stop_discussion(self, headers: dict[str, str], discussion: str) -> None:
        with self.client() as client:
            client.post(f"/api/discussions/{discussion}/stop", headers=headers).raise_for_status()

    def websocket(self, headers: dict[str, str], discussion: str, after: int = 0) -> ClientConnection:
        """A WebSocket to the discussion's events through nginx's /ws/, with a fresh single-use ticket."""
        with self.client() as client:
            answer = client.post("/api/ws-ticket", json={"discussion_id": discussion}, headers=headers)
        answer.raise_for_status()
        ticket = answer.json()["ticket"]
        url = f"wss://127.0.0.1:{self.port}/ws/discussions/{discussion}?ticket={ticket}&after={after}"
        return connect(url, ssl=self.tls(), origin=Origin(self.origin), proxy=None, open_timeout=10)

    def read_to_end(self, headers: dict[str, str], discussion: str, timeout: float) -> list[dict[str, Any]]:
        """The discussion's events from the start, through `discussion_finished` (`timeout`: the longest gap)."""
        seen = []
        with self.websocket(headers, discussion) as ws:
            for event in events(ws, timeout=timeout):
                seen.append(event)
                if event["type"] == "discussion_finished":
                    break
        return seen


def events(ws: ClientConnection, timeout: float) -> Iterator[dict[str, Any]]:
    """Messages from a WebSocket until it closes or `timeout` passes without one."""
    while True:
        yield json.loads(ws.recv(timeout=timeout))


@dataclass
class Followed:
    """A discussion followed to its end across server restarts: its events and how each connection ended."""

    events: list[dict[str, Any]] = field(default_factory=list)
    # Per connection: the close frame received (code, reason; None without one), the reconnect hint before it,
    # and the close frame this client sent (its keepalive timing out sends 1011).
    closes: list[tuple[int | None, str, dict[str, Any] | None, str]] = field(default_factory=list)
    connections: int = 0  # opened
    slow_opens: list[str] = field(default_factory=list)  # attempts whose handshake timed out (tried again)

    def __str__(self) -> str:
        last = self.events[-1] if self.events else {}
        slow = f", slow opens {self.slow_opens}" if self.slow_opens else ""
        end = f"last event {last.get('seq')} {last.get('type')}"
        return f"{self.connections} connections, closes {self.closes}{slow}, {end}"


def follow_discussion(
    site: Site, headers: dict[str, str], discussion: str, limit_seconds: float = 300, followed: Followed | None = None
) -> Followed:
    """What a browser does: read events; on a close, wait as the reconnect hint says, then resume after the last seq.
    A `followed` given fills as it goes, so a caller that gives up waiting can still say how far it got."""
    followed = followed if followed is not None else Followed()
    deadline = time.monotonic() + limit_seconds
    while time.monotonic() < deadline:
        hint: dict[str, Any] | None = None
        after = followed.events[-1]["seq"] if followed.events else 0
        try:
            opened = site.websocket(headers, discussion, after)
        except (TimeoutError, httpx.TimeoutException) as slow:
            # A handshake slower than its timeout (a loaded box): a browser tries again, so does the follower.
            # Any other failure to open ends it, with its error.
            followed.slow_opens.append(repr(slow))
            time.sleep(1)
            continue
        followed.connections += 1
        try:
            with opened as ws:
                for event in events(ws, timeout=max(deadline - time.monotonic(), 1)):
                    if event.get("type") == "reconnect":
                        hint = event
                        continue
                    followed.events.append(event)
                    if event["type"] == "discussion_finished":
                        return followed
        except ConnectionClosed as closed:
            received, sent = closed.rcvd, closed.sent
            code, reason = (received.code, received.reason) if received else (None, "")
            followed.closes.append((code, reason, hint, f"{sent.code} {sent.reason}" if sent else ""))
            time.sleep((hint or {}).get("after_ms", 1000) / 1000)
    raise AssertionError(f"discussion {discussion} did not finish within {limit_seconds}s: {followed.closes}")


def failing(outcome: str) -> bool:
    """A request that got no HTTP answer or an answer of 500 or more."""
    return not outcome.isdigit() or int(outcome) >= 500


@dataclass
class LoadReport:
    """What a steady load saw: one outcome per request ('200', '502', 'ConnectError', ...)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    # Each failed request's path, outcome and (sent, ended) on time.monotonic(): what failed when in an outage.
    failures: list[tuple[str, str, float, float]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return sum(n for outcome, n in self.outcomes.items() if failing(outcome))


@contextmanager
def steady_load(site: Site, paths: list[str], per_second: int, limit_seconds: float = 600) -> Iterator[LoadReport]:
    """Requests at a constant rate, each on a new TLS connection, round-robin over `paths`, until the block ends.

    The rate holds even when answers slow down (requests are scheduled, not chained); the load stops after
    `limit_seconds` whatever happens, so a hung test cannot flood the machine.
    """
    report = LoadReport()
    lock = threading.Lock()
    stop = threading.Event()
    context = site.tls()

    def one(path: str) -> None:
        sent = time.monotonic()
        try:
            with httpx.Client(base_url=site.origin, verify=context, timeout=10) as client:
                outcome = str(client.get(path, headers={"Connection": "close"}).status_code)
        except httpx.HTTPError as error:
            outcome = type(error).__name__
            with lock:
                report.errors.append(f"{path}: {error!r}")
        with lock:
            report.outcomes[outcome] += 1
            if failing(outcome):
                report.failures.append((path, outcome, sent, time.monotonic()))

    def schedule(pool: ThreadPoolExecutor) -> None:
        started = time.monotonic()
        sent = 0
        while not stop.is_set() and time.monotonic() - started < limit_seconds:
            pool.submit(one, paths[sent % len(paths)])
            sent += 1
            stop.wait(max(started + sent / per_second - time.monotonic(), 0))

    with ThreadPoolExecutor(max_workers=32) as pool:
        scheduler = threading.Thread(target=schedule, args=(pool,), daemon=True)
        scheduler.start()
        try:
            yield report
        finally:
            stop.set()
            scheduler.join()
