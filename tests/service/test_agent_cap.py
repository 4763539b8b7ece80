"""MAX_CONCURRENT_AGENTS is one cap across gunicorn workers, and a killed worker leaks nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter

import asyncpg
import httpx
import pytest
import redis

from tests.service.api import create_discussion, new_user, read_events, wait_finished
from tests.service.stack import TEST_REDIS_URL, FakeLlm, Service, wait_until

pytestmark = pytest.mark.integration
CAP = 3  # MAX_CONCURRENT_AGENTS of the session service


def running_now(client: redis.Redis, holders_key: str) -> int:
    return int(client.zcount(holders_key, int(time.time() * 1000), "+inf"))


async def lease_owners(database_url: str, ids: list[str]) -> list[str | None]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT lease_owner FROM discussions WHERE id = ANY($1::uuid[])", ids)
        return [r["lease_owner"] for r in rows]
    finally:
        await conn.close()


def test_cap_holds_exactly_with_more_discussions_than_slots(
    client: httpx.Client, service: Service, fake_llm: FakeLlm, redis_prefix: str, database_url: str
) -> None:
    wait_until(lambda: fake_llm.stats()["active"] == 0, 30, "earlier streams to end")
    fake_llm.reset()
    user = new_user(client)
    holders_key = f"{redis_prefix}agent-slots:holders"
    rclient = redis.Redis.from_url(TEST_REDIS_URL)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(running_now(rclient, holders_key))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    ids = []
    owners: set[str] = set()
    try:
        for i in range(6):
            # A new connection per request, so gunicorn spreads the discussions over its workers.
            with httpx.Client(base_url=service.url, timeout=30) as fresh:
                ids.append(create_discussion(fresh, user, f"Cap {i} [[fake:delay=0.1,words=10]]", ["bull", "bear"]))
        owners = {o.rsplit(":", 1)[0] for o in asyncio.run(lease_owners(database_url, ids)) if o}
        for discussion in ids:
            assert wait_finished(client, user, discussion, timeout=90)["status"] == "completed"
    finally:
        stop.set()
        sampler.join()
    assert max(samples) == CAP
    assert fake_llm.stats()["max_active"] == CAP  # what the upstream actually saw
    assert len(owners) == 2, f"discussions ran in {owners}; expected both workers"
    queued = [e for e in read_events(service, client, user, ids[-1]) if e["type"] == "queued"]
    assert queued and all(e["position"] >= 1 for e in queued)
    assert running_now(rclient, holders_key) == 0
    rclient.close()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "graceful-term"])
def test_killed_worker_leaks_no_slot_and_loses_no_completed_message(
    client: httpx.Client, service: Service, redis_prefix: str, database_url: str, sig: signal.Signals
) -> None:
    user = new_user(client)
    holders_key = f"{redis_prefix}agent-slots:holders"
    panel = ["fundamentals", "technical", "sentiment"]
    discussion = create_discussion(client, user, "Crash [[fake:delay=0.1,words=20]]", panel)
    read_events(service, client, user, discussion, until=lambda e: e["type"] == "token" and e["turn_index"] == 1)
    rclient = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    held = {str(m) for m in rclient.zrange(holders_key, 0, -1)}
    (owner,) = asyncio.run(lease_owners(database_url, [discussion]))
    assert owner is not None
    pid = int(owner.split(":")[1])
    assert pid in service.worker_pids()
    os.kill(pid, sig)

    # The dead worker's slot lease expires (DISCUSSION_LEASE_SECONDS=3) or a stopping one releases it ...
    def slot_released() -> bool:
        live = {str(m) for m in rclient.zrangebyscore(holders_key, int(time.time() * 1000), "+inf")}
        return not live & held

    wait_until(slot_released, 10, "the killed worker's slot to expire")
    # ... and another worker resumes the discussion from its persisted messages.
    detail = wait_finished(client, user, discussion, timeout=60)
    assert detail["status"] == "completed"
    assert [m["turn_index"] for m in detail["messages"]] == [0, 1, 2, 3]
    assert all(m["status"] == "completed" for m in detail["messages"])
    events = read_events(service, client, user, discussion)
    announced = Counter(e["message"]["turn_index"] for e in events if e["type"] == "message_completed")
    assert announced == Counter({0: 1, 1: 1, 2: 1, 3: 1})
    by_turn = {e["message"]["turn_index"]: e["message"]["content"] for e in events if e["type"] == "message_completed"}
    assert by_turn == {m["turn_index"]: m["content"] for m in detail["messages"]}
    wait_until(lambda: len(service.worker_pids()) == 2, 20, "gunicorn to replace the killed worker")
    assert running_now(rclient, holders_key) == 0
    rclient.close()


def test_agent_timeout_counts_from_the_slot_not_from_the_queue(
    client: httpx.Client, service: Service, fake_llm: FakeLlm
) -> None:
    """AGENT_TIMEOUT (4 s here) bounds a turn from the moment it holds a slot; time queued behind the cap
    does not count (WORKFLOW_TIMEOUT bounds that), so a turn may take longer than AGENT_TIMEOUT in all."""
    wait_until(lambda: fake_llm.stats()["active"] == 0, 30, "earlier streams to end")
    user = new_user(client)
    # 10 discussions x 2 turns of ~2 s each on 3 slots: late turns queue for several seconds.
    ids = [create_discussion(client, user, f"Queue {i} [[fake:delay=0.1,words=20]]", ["risk"]) for i in range(10)]
    spans = []
    for discussion in ids:
        detail = wait_finished(client, user, discussion, timeout=120)
        assert detail["status"] == "completed"
        assert [m["status"] for m in detail["messages"]] == ["completed", "completed"]
        events = read_events(service, client, user, discussion)
        queued_at: dict[int, float] = {}
        for event in events:
            if event["type"] == "queued":
                queued_at.setdefault(event["turn_index"], event["ts"])
            if event["type"] == "message_completed" and event["message"]["turn_index"] in queued_at:
                spans.append(event["ts"] - queued_at[event["message"]["turn_index"]])
    assert max(spans) > 4  # queued + speaking exceeded AGENT_TIMEOUT, and the turn still completed
