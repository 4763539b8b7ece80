"""The Redis agent semaphore and the event fan-out, driven directly against real Redis."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

import pytest
from redis.asyncio import Redis

from service.agents.slots import AgentSlots
from service.streaming import SUBSCRIBER_QUEUE_LIMIT, EventHub, EventLog, SlowConsumerError
from tests.service.stack import TEST_REDIS_URL

pytestmark = pytest.mark.integration


def prefix(redis_prefix: str) -> str:
    return f"{redis_prefix}{secrets.token_hex(4)}:"


def test_waiters_get_slots_in_arrival_order_with_positions(redis_prefix: str) -> None:
    async def scenario() -> tuple[list[str], dict[str, list[int]]]:
        client = Redis.from_url(TEST_REDIS_URL)
        slots = AgentSlots(client, prefix(redis_prefix), cap=1, lease_seconds=5)
        granted: list[str] = []
        positions: dict[str, list[int]] = {}
        release_first = asyncio.Event()

        async def agent(name: str, hold: asyncio.Event | None) -> None:
            async def on_queued(position: int) -> None:
                positions.setdefault(name, []).append(position)

            async with slots.slot(on_queued):
                granted.append(name)
                if hold:
                    await hold.wait()
                else:
                    await asyncio.sleep(0.05)

        first = asyncio.create_task(agent("a", release_first))
        await asyncio.sleep(0.1)
        waiters = []
        for name in ("b", "c", "d"):
            waiters.append(asyncio.create_task(agent(name, None)))
            await asyncio.sleep(0.15)  # arrival order is b, c, d
        release_first.set()
        await asyncio.gather(first, *waiters)
        await client.aclose()
        return granted, positions

    granted, positions = asyncio.run(scenario())
    assert granted == ["a", "b", "c", "d"]
    assert positions["b"][0] == 1 and positions["c"][0] == 2 and positions["d"][0] == 3


def test_a_dead_holders_lease_expires_and_frees_the_slot(redis_prefix: str) -> None:
    async def scenario() -> float:
        client = Redis.from_url(TEST_REDIS_URL)
        slots = AgentSlots(client, prefix(redis_prefix), cap=1, lease_seconds=1)
        # What a SIGKILLed worker leaves behind: a lease that nobody renews or releases.
        seconds, micros = await client.time()
        await client.zadd(slots.holders_key, {"dead-worker": seconds * 1000 + micros // 1000 + 1000})
        started = time.monotonic()
        async with slots.slot(lambda _: asyncio.sleep(0)):
            waited = time.monotonic() - started
        await client.aclose()
        return waited

    waited = asyncio.run(scenario())
    assert 0.5 < waited < 2.5


def test_slow_subscriber_is_dropped_without_slowing_others(redis_prefix: str) -> None:
    async def scenario() -> tuple[list[int], bool]:
        client = Redis.from_url(TEST_REDIS_URL)
        log = EventLog(client, prefix(redis_prefix))
        hub = EventHub(log)
        discussion = uuid.uuid4()
        total = SUBSCRIBER_QUEUE_LIMIT + 100
        received: list[int] = []
        dropped = False
        async with hub.subscribe(discussion, 0) as fast, hub.subscribe(discussion, 0) as slow:

            async def read_fast() -> None:
                async for event in fast.events():
                    received.append(event["seq"])
                    if event["seq"] == total:
                        return

            reader = asyncio.create_task(read_fast())
            for i in range(total):
                await log.append(discussion, "token", text=str(i))
            await asyncio.wait_for(reader, 20)
            try:
                async for _ in slow.events():  # never read until now: its buffer overflowed long ago
                    pass
            except SlowConsumerError:
                dropped = True
        await log.delete(discussion)
        await client.aclose()
        return received, dropped

    received, dropped = asyncio.run(scenario())
    assert received == list(range(1, SUBSCRIBER_QUEUE_LIMIT + 101))
    assert dropped
