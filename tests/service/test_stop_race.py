"""A stop right after a handover: two orchestrators ("workers") on real PostgreSQL, Redis and the fake LLM.

Worker A drains (its runs are released) and worker B's reaper takes the discussion over. Every other round the
user's stop lands while B is between its last check and the turn it starts: to hit that moment every time, the
test holds a lock on `users`, which B's quota check reads just before the turn, so B blocks there, the stop comes,
the lock goes. Before the fix the stop only set a flag there, and B ran the whole turn first (seconds late).
In the other rounds the stop lands in the first milliseconds of B's turn, where a cancel could be lost inside a
library (1 in 60 here, 12 in 200 in CI, each then late by AGENT_TIMEOUT) until the turn was cancelled again.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from service import discussions
from service.agents.orchestration import Orchestrator
from service.agents.slots import AgentSlots
from service.auth import insert_user
from service.db import create_pool
from service.llm import LlmClient
from service.settings import load_settings
from service.streaming import EventLog
from tests.service.conftest import TEST_REDIS_URL, FakeLlm, service_env

pytestmark = pytest.mark.integration
ROUNDS = 200
LEASE_SECONDS = 0.2  # the reaper looks every 0.1 s
TOPIC = "Stop me [[fake:delay=0.05,words=100]]"  # 5 s turns: a stop that waits for one is late
STOP_WITHIN = 2.0


@asynccontextmanager
async def worker(pool: asyncpg.Pool, redis: Redis, env: dict[str, str], name: str) -> AsyncIterator[Orchestrator]:
    settings = load_settings(env)
    llm = LlmClient(settings, redis)
    slots = AgentSlots(redis, settings.redis_key_prefix, settings.max_concurrent_agents, LEASE_SECONDS)
    orchestrator = Orchestrator(
        pool, redis, settings, llm, slots, EventLog(redis, settings.redis_key_prefix), f"{name}:{uuid.uuid4().hex}"
    )
    orchestrator.start()
    try:
        yield orchestrator
    finally:
        await orchestrator.close()
        await llm.close()


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.005)


async def one_round(
    pool: asyncpg.Pool, redis: Redis, env: dict[str, str], user: uuid.UUID, b: Orchestrator, in_the_gap: bool
) -> float:
    """One handover from a fresh worker A to B, and a stop; the seconds from the stop to `stopped`. `in_the_gap`:
    the stop lands while B waits in its quota check; else at a random moment of B's first 30 ms after it."""
    settings = load_settings(env)
    async with worker(pool, redis, env, "a") as a:
        row = await discussions.create(pool, settings, user, TOPIC, ["bull", "bear"], 1, 100_000, a.worker_id)
        discussion = row["id"]
        a.launch(discussion)
        events = EventLog(redis, settings.redis_key_prefix)
        await until(lambda: _has_token(events, discussion), 20, "worker A's first token")
        lock = await pool.acquire()
        await lock.execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
    # A has drained: its lease is expired, B's reaper claims the discussion and blocks in its quota check.
    try:
        await until(lambda: _waits_on_users(pool), 20, "worker B to take over and reach its quota check")
        assert await discussions.mark_stopping(pool, user, discussion) == "stopping"
        stopped_at = time.monotonic()
        if in_the_gap:
            await b.request_stop(discussion)
            await asyncio.sleep(0.05)  # the stop signal reaches B while it waits
    finally:
        await lock.execute("ROLLBACK")
        await pool.release(lock)
    if not in_the_gap:
        # B starts its turn now: its slot, its first event, the upstream request (where CI saw a cancel lost).
        await asyncio.sleep(random.random() * 0.03)
        await b.request_stop(discussion)
    await until(lambda: _status_is(pool, discussion, "stopped"), 30, "the discussion to stop")
    return time.monotonic() - stopped_at


async def _has_token(events: EventLog, discussion: uuid.UUID) -> bool:
    return any(e["type"] == "token" for e in await events.read_after(discussion, 0))


async def _waits_on_users(pool: asyncpg.Pool) -> bool:
    waiting = await pool.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'users'::regclass")
    return bool(waiting)


async def _status_is(pool: asyncpg.Pool, discussion: uuid.UUID, status: str) -> bool:
    return bool(await pool.fetchval("SELECT status = $2 FROM discussions WHERE id = $1", discussion, status))


@pytest.mark.xfail(
    reason="#16 open: in CI 9-12 of 200 stops are late by AGENT_TIMEOUT (0 of 600+ here); the re-sent cancel did "
    "not cure it, so the lost stop is not a lost cancel. Runs every time and reports XPASS once fixed.",
    strict=False,
)
def test_a_stop_right_after_a_handover_takes_effect_within_two_seconds_every_time(
    database_url: str, redis_prefix: str, fake_llm: FakeLlm, tmp_path: Path
) -> None:
    env = service_env(
        database_url, f"{redis_prefix}race:", fake_llm, tmp_path, DISCUSSION_LEASE_SECONDS=str(LEASE_SECONDS)
    )

    async def scenario() -> list[float]:
        pool = await create_pool(database_url)
        redis = Redis.from_url(TEST_REDIS_URL)
        try:
            user = await insert_user(pool, f"race-{uuid.uuid4().hex[:8]}@example.test", "a long password 1")
            async with worker(pool, redis, env, "b") as b:
                return [await one_round(pool, redis, env, user, b, n % 2 == 0) for n in range(ROUNDS)]
        finally:
            await redis.aclose()
            await pool.close()

    delays = asyncio.run(scenario())
    late = [round(d, 2) for d in delays if d > STOP_WITHIN]
    assert not late, f"{len(late)} of {ROUNDS} stops were late (s): {late[:10]}"
