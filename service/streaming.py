"""Discussion events: an append-only Redis Stream per discussion, and per-worker fan-out to WebSockets.

Every event gets a per-discussion sequence number, which is also its stream entry id (`<seq>-0`),
so a client resuming `after=<seq>` reads exactly the entries that follow.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

Event = dict[str, Any]

# KEYS: seq counter, stream; ARGV: event json without seq. Numbering and appending are one atomic step.
_APPEND = """
local seq = redis.call('INCR', KEYS[1])
local event = cjson.decode(ARGV[1])
event['seq'] = seq
redis.call('XADD', KEYS[2], seq .. '-0', 'e', cjson.encode(event))
return seq
"""

FINISHED = "discussion_finished"
SUBSCRIBER_QUEUE_LIMIT = 1000  # events buffered per WebSocket before the client counts as not reading
RETAIN_SECONDS = 7 * 86400


class EventLog:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._append = redis.register_script(_APPEND)

    def stream_key(self, discussion_id: uuid.UUID) -> str:
        return f"{self._prefix}discussion:{discussion_id}:events"

    def _seq_key(self, discussion_id: uuid.UUID) -> str:
        return f"{self._prefix}discussion:{discussion_id}:seq"

    async def append(self, discussion_id: uuid.UUID, kind: str, at: float | None = None, **data: Any) -> int:
        """Append an event; `at` (epoch seconds, default now) becomes its `ts`, the server's clock."""
        keys = [self._seq_key(discussion_id), self.stream_key(discussion_id)]
        event = {"type": kind, "ts": round(time.time() if at is None else at, 3), **data}
        seq = int(await self._append(keys=keys, args=[json.dumps(event, default=str)]))
        if kind == FINISHED:
            for key in keys:
                await self._redis.expire(key, RETAIN_SECONDS)
        return seq

    async def last_seq(self, discussion_id: uuid.UUID) -> int:
        return int(await self._redis.get(self._seq_key(discussion_id)) or 0)

    async def last_event(self, discussion_id: uuid.UUID) -> Event | None:
        entries: Any = await self._redis.xrevrange(self.stream_key(discussion_id), count=1)
        return json.loads(entries[0][1][b"e"]) if entries else None

    async def read_after(self, discussion_id: uuid.UUID, after: int) -> list[Event]:
        entries: Any = await self._redis.xrange(self.stream_key(discussion_id), min=f"({after}-0")
        return [json.loads(fields[b"e"]) for _, fields in entries]

    async def read_blocking(self, discussion_id: uuid.UUID, after: int, block_ms: int) -> list[Event]:
        reply: Any = await self._redis.xread({self.stream_key(discussion_id): f"{after}-0"}, block=block_ms)
        return [json.loads(fields[b"e"]) for _, entries in reply for _, fields in entries]

    async def delete(self, discussion_id: uuid.UUID) -> None:
        await self._redis.delete(self.stream_key(discussion_id), self._seq_key(discussion_id))


class SlowConsumerError(Exception):
    """The client did not read fast enough; its connection is dropped so others are not slowed."""


class Subscription:
    """One client's view of a discussion: stored events after `after`, then live ones."""

    def __init__(self, after: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE_LIMIT)
        self.dropped = asyncio.Event()
        self.backfill: list[Event] = []
        self.after = after

    def offer(self, event: Event) -> bool:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped.set()
            return False
        return True

    async def next(self) -> Event:
        """The next event, or SlowConsumerError once the buffer overflowed."""
        if self.dropped.is_set():
            raise SlowConsumerError(f"client fell more than {SUBSCRIBER_QUEUE_LIMIT} events behind")
        getter = asyncio.ensure_future(self.queue.get())
        dropper = asyncio.ensure_future(self.dropped.wait())
        done, pending = await asyncio.wait({getter, dropper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if getter in done:
            return getter.result()
        raise SlowConsumerError(f"client fell more than {SUBSCRIBER_QUEUE_LIMIT} events behind")

    async def events(self) -> AsyncIterator[Event]:
        last = self.after
        for event in self.backfill:
            last = event["seq"]
            yield event
        while True:
            event = await self.next()
            if event["seq"] > last:  # live events already covered by the backfill are skipped
                last = event["seq"]
                yield event


class EventHub:
    """One Redis reader per discussion per worker, fanned out to that worker's subscribers."""

    def __init__(self, log_: EventLog) -> None:
        self._log = log_
        self._subscribers: dict[uuid.UUID, set[Subscription]] = {}
        self._tails: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._retired: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def subscribe(self, discussion_id: uuid.UUID, after: int) -> AsyncIterator[Subscription]:
        """Yield a subscription whose events() are those with seq > `after`, in order, each exactly once."""
        sub = Subscription(after)
        subscribers = self._subscribers.setdefault(discussion_id, set())
        subscribers.add(sub)
        if discussion_id not in self._tails:
            start = await self._log.last_seq(discussion_id)
            self._tails[discussion_id] = asyncio.create_task(self._tail(discussion_id, start))
        try:
            # Registered before the backfill, so nothing falls between backfill and live events.
            sub.backfill = await self._log.read_after(discussion_id, after)
            yield sub
        finally:
            subscribers.discard(sub)
            if not subscribers:
                del self._subscribers[discussion_id]
                # Not awaited: redis-py can swallow a cancel that lands inside its read timeout, so the
                # tail also ends by itself once it is no longer the registered one (within one block).
                tail = self._tails.pop(discussion_id)
                tail.cancel()
                self._retired.add(tail)
                tail.add_done_callback(self._retired.discard)

    async def _tail(self, discussion_id: uuid.UUID, after: int) -> None:
        while self._tails.get(discussion_id) is asyncio.current_task():
            try:
                # Blocks for less than redis-py's default 5 s socket timeout.
                events = await self._log.read_blocking(discussion_id, after, block_ms=2000)
            except RedisError as exc:
                log.warning("event stream read failed, retrying: %s", exc)
                await asyncio.sleep(1)
                continue
            for event in events:
                after = event["seq"]
                for sub in list(self._subscribers.get(discussion_id, ())):
                    sub.offer(event)
