"""A deploy drain: gunicorn stops, open WebSockets get a reconnect hint and 1012, and resume elsewhere."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Origin

from service.drain import CLOSE_CODE, CLOSE_REASON, RECONNECT_AFTER_MS
from tests.service.api import create_discussion, new_user, read_events, ws_ticket, ws_url
from tests.service.stack import ORIGIN, FakeLlm, running_service, service_env, start_service, stop_process

pytestmark = pytest.mark.integration
GRACE = 1.5


def test_sigterm_sends_reconnect_hint_and_1012_then_a_fresh_server_resumes(
    database_url: str, redis_prefix: str, fake_llm: FakeLlm, tmp_path: Path
) -> None:
    env = service_env(database_url, redis_prefix, fake_llm, tmp_path, WS_DRAIN_SECONDS=str(GRACE))
    old = start_service(env, tmp_path / "old.log")
    try:
        with httpx.Client(base_url=old.url, timeout=30) as client:
            user = new_user(client)
            discussion = create_discussion(client, user, "Drain [[fake:delay=0.05,words=60]]", ["bull", "bear"])
            url = ws_url(old, discussion, ws_ticket(client, user, discussion))
        events: list[dict[str, Any]] = []
        with connect(url, origin=Origin(ORIGIN), proxy=None) as ws:
            while not any(e["type"] == "token" for e in events):
                events.append(json.loads(ws.recv(timeout=20)))
            old.proc.send_signal(signal.SIGTERM)  # what a deploy's drain does to the old API
            terminated = time.monotonic()
            hints: list[dict[str, Any]] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    message = json.loads(ws.recv(timeout=20))
                    (hints if message["type"] == "reconnect" else events).append(message)
            closed_after = time.monotonic() - terminated
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (CLOSE_CODE, CLOSE_REASON)
        (hint,) = hints
        assert RECONNECT_AFTER_MS[0] <= hint["after_ms"] <= RECONNECT_AFTER_MS[1]
        assert GRACE <= closed_after < GRACE + 5  # events kept flowing for the grace period, then the close
        assert events[-1]["type"] == "token"  # still mid-discussion: the grace did not wait for the end
        assert old.proc.wait(30) == 0
    finally:
        stop_process(old.proc)

    # Same database and Redis: the next release.
    with running_service(env, tmp_path / "fresh.log") as fresh, httpx.Client(base_url=fresh.url, timeout=30) as client:
        rest = read_events(fresh, client, user, discussion, after=events[-1]["seq"])
    seqs = [e["seq"] for e in events + rest]
    assert seqs == list(range(1, len(seqs) + 1))  # nothing lost, nothing doubled across the restart
    assert rest[-1]["type"] == "discussion_finished" and rest[-1]["status"] == "completed"
