"""MAX_CONCURRENT_AGENTS as one cap for the whole service: a Redis semaphore of expiring leases.

Holders live in a sorted set scored by lease expiry (ms); a dead worker's leases simply expire.
Waiters queue FIFO in a second sorted set scored by arrival order, with their own expiring
heartbeat so an abandoned waiter cannot block the queue.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from redis.asyncio import Redis

# KEYS: holders, queue, waiter_expiry, arrival_counter
# ARGV: lease_id, lease_ms, cap, waiter_ttl_ms   (time comes from the Redis server: one clock for all hosts)
# Returns 0 when the slot is granted, else the 1-based queue position.
_ACQUIRE = """
local holders, queue, waiters, counter = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, lease, cap, waiter_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
local stale = redis.call('ZRANGEBYSCORE', waiters, '-inf', now)
for _, w in ipairs(stale) do redis.call('ZREM', queue, w) end
redis.call('ZREMRANGEBYSCORE', waiters, '-inf', now)
if redis.call('ZSCORE', queue, id) == false then
  redis.call('ZADD', queue, redis.call('INCR', counter), id)
end
redis.call('ZADD', waiters, now + waiter_ttl, id)
local rank = redis.call('ZRANK', queue, id)
if rank < cap - redis.call('ZCARD', holders) then
  redis.call('ZREM', queue, id)
  redis.call('ZREM', waiters, id)
  redis.call('ZADD', holders, now + lease, id)
  return 0
end
return rank + 1
"""

# KEYS: holders; ARGV: lease_id, lease_ms. Returns 1 if the lease was still held.
_RENEW = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""

POLL_SECONDS = 0.1
QueuedCallback = Callable[[int], Awaitable[None]]


class AgentSlots:
    def __init__(self, redis: Redis, prefix: str, cap: int, lease_seconds: float = 15.0) -> None:
        self.holders_key = f"{prefix}agent-slots:holders"
        self.queue_key = f"{prefix}agent-slots:queue"
        self._waiters_key = f"{prefix}agent-slots:waiter-expiry"
        self._counter_key = f"{prefix}agent-slots:arrivals"
        self._redis = redis
        self._cap = cap
        self._lease_ms = int(lease_seconds * 1000)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)

    @asynccontextmanager
    async def slot(self, on_queued: QueuedCallback) -> AsyncIterator[None]:
        """Hold one slot for the body. `on_queued(position)` is awaited whenever the position changes."""
        lease_id = uuid.uuid4().hex
        try:
            await self._wait_for_slot(lease_id, on_queued)
            renewer = asyncio.create_task(self._keep_renewed(lease_id))
            try:
                yield
            finally:
                # Not awaited (redis-py may swallow a cancel mid-read); it also stops once the lease is gone.
                renewer.cancel()
        finally:
            # Runs on cancellation too; shielded so a cancelled turn still frees its slot at once.
            await asyncio.shield(self._release(lease_id))

    async def _wait_for_slot(self, lease_id: str, on_queued: QueuedCallback) -> None:
        last_position = None
        while True:
            keys = [self.holders_key, self.queue_key, self._waiters_key, self._counter_key]
            position = int(await self._acquire(keys=keys, args=[lease_id, self._lease_ms, self._cap, 5000]))
            if position == 0:
                return
            if position != last_position:
                await on_queued(position)
                last_position = position
            await asyncio.sleep(POLL_SECONDS)

    async def _keep_renewed(self, lease_id: str) -> None:
        held = True
        while held:
            await asyncio.sleep(self._lease_ms / 3000)
            held = bool(await self._renew(keys=[self.holders_key], args=[lease_id, self._lease_ms]))

    async def _release(self, lease_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.holders_key, lease_id)
            pipe.zrem(self.queue_key, lease_id)
            pipe.zrem(self._waiters_key, lease_id)
            await pipe.execute()
