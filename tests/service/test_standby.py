"""Standby, as a warm rollback uses it: the old API (gunicorn, 2 workers) hands its discussion to the new one
without exiting, its WebSockets get the reconnect hint, and a follower resumes on the new API losing nothing."""

from __future__ import annotations

import json
import re
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Origin

from service.drain import CLOSE_CODE, CLOSE_REASON
from tests.service.api import create_discussion, new_user, read_events, ws_ticket, ws_url
from tests.service.stack import ORIGIN, FakeLlm, running_service, service_env, wait_until

pytestmark = pytest.mark.integration
GRACE = 1.0


def standby_pids(log: Path) -> set[int]:
    """Worker pids that logged entering standby (each JSON log line names its process)."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    entered = re.compile(r"standby: \d+ discussions handed over")
    return {int(line["pid"]) for line in lines if "pid" in line and entered.match(line["msg"])}


def test_standby_hands_a_running_discussion_to_another_api_and_stays_up(
    database_url: str, redis_prefix: str, fake_llm: FakeLlm, tmp_path: Path
) -> None:
    flag = tmp_path / "old-standby"
    env = service_env(database_url, redis_prefix, fake_llm, tmp_path, WS_DRAIN_SECONDS=str(GRACE))
    env["STANDBY_FILE"] = str(flag)
    (tmp_path / "new").mkdir()
    new_env = service_env(database_url, redis_prefix, fake_llm, tmp_path / "new", STANDBY_FILE=str(tmp_path / "unused"))
    with running_service(env, tmp_path / "old.log") as old, running_service(new_env, tmp_path / "new.log") as new:
        with httpx.Client(base_url=old.url, timeout=30) as client:
            user = new_user(client)
            discussion = create_discussion(client, user, "Warm [[fake:delay=0.05,words=40]]", ["bull", "bear"])
            url = ws_url(old, discussion, ws_ticket(client, user, discussion))
        events: list[dict[str, Any]] = []
        hints: list[dict[str, Any]] = []
        with connect(url, origin=Origin(ORIGIN), proxy=None) as ws:
            while not any(e["type"] == "token" for e in events):
                events.append(json.loads(ws.recv(timeout=20)))
            flag.touch()  # what a switch does to the previous release's API
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    message = json.loads(ws.recv(timeout=20))
                    (hints if message["type"] == "reconnect" else events).append(message)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (CLOSE_CODE, CLOSE_REASON)
        assert len(hints) == 1
        wait_until(lambda: standby_pids(old.log_path) == set(old.worker_pids()), 10, "both old workers in standby")

        with httpx.Client(base_url=new.url, timeout=30) as client:
            rest = read_events(new, client, user, discussion, after=events[-1]["seq"])
            row = client.get(f"/api/discussions/{discussion}", headers=user.headers).json()
        seqs = [e["seq"] for e in events + rest]
        assert seqs == list(range(1, len(seqs) + 1))  # nothing lost, nothing doubled across the hand-over
        assert rest[-1]["type"] == "discussion_finished" and rest[-1]["status"] == "completed"
        turns = [m["turn_index"] for m in row["messages"]]
        assert turns == sorted(set(turns)) == [0, 1, 2]  # each turn stored once: bull, bear, moderator

        # Still up and healthy, running nothing: a discussion created through it is run by the other API.
        assert old.proc.poll() is None
        with httpx.Client(base_url=old.url, timeout=30) as client:
            assert client.get("/api/health").status_code == 200
            late = create_discussion(client, user, "Late [[fake:delay=0.01,words=5]]", ["bull"])
        with httpx.Client(base_url=new.url, timeout=30) as client:
            finished = read_events(new, client, user, late)
        assert finished[-1]["status"] == "completed"
        assert "handed over" not in new.log_path.read_text()  # the new API never went standby

        # Woken, the old API runs discussions again: put the new one in standby and the old one takes over.
        flag.unlink()
        time.sleep(1)
        with httpx.Client(base_url=old.url, timeout=30) as client:
            again = create_discussion(client, user, "Awake [[fake:delay=0.01,words=5]]", ["bull"])
            assert read_events(old, client, user, again)[-1]["status"] == "completed"
        assert "standby over: running discussions again" in old.log_path.read_text()


def test_a_woken_api_going_standby_again_closes_every_websocket_opened_since(
    database_url: str, redis_prefix: str, fake_llm: FakeLlm, tmp_path: Path
) -> None:
    """A rollback's second pass: standby, woken, then standby again (the next deploy). Each socket opened after the
    wake, on either worker, gets the hint and 1012 the second time too."""
    flag = tmp_path / "standby"
    env = service_env(
        database_url, redis_prefix, fake_llm, tmp_path, WS_DRAIN_SECONDS=str(GRACE), STANDBY_FILE=str(flag)
    )
    with running_service(env, tmp_path / "api.log") as api, httpx.Client(base_url=api.url, timeout=30) as client:
        flag.touch()
        wait_until(lambda: standby_pids(api.log_path) == set(api.worker_pids()), 10, "both workers in standby")
        flag.unlink()
        woken = "standby over: running discussions again"
        wait_until(lambda: api.log_path.read_text().count(woken) == len(api.worker_pids()), 10, "both workers woken")
        user = new_user(client)
        discussion = create_discussion(client, user, "Again [[fake:delay=0.05,words=400]]", ["bull"])
        closes = []
        with ExitStack() as stack:
            # Four sockets, so that both workers (new connections go to either) hold some.
            sockets = [
                stack.enter_context(
                    connect(
                        ws_url(api, discussion, ws_ticket(client, user, discussion)), origin=Origin(ORIGIN), proxy=None
                    )
                )
                for _ in range(4)
            ]
            for ws in sockets:
                json.loads(ws.recv(timeout=20))  # streaming
            flag.touch()
            for ws in sockets:
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        ws.recv(timeout=GRACE + 10)
                closes.append((closed.value.rcvd.code, closed.value.rcvd.reason) if closed.value.rcvd else None)
    assert closes == [(CLOSE_CODE, CLOSE_REASON)] * 4
