"""WebSocket edges through real sockets: first-message authentication, and a client that stops reading."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
import uuid
from typing import Any

import httpx
import pytest
import websockets
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Origin

from service.streaming import FINISHED, SUBSCRIBER_QUEUE_LIMIT, EventLog
from tests.service.api import User, create_discussion, new_user, wait_finished, ws_ticket, ws_url
from tests.service.stack import ORIGIN, TEST_REDIS_URL, Service

pytestmark = pytest.mark.integration


def bare_url(service: Service, discussion_id: str, after: int = 0) -> str:
    return f"ws://{service.url.removeprefix('http://')}/ws/discussions/{discussion_id}?after={after}"


def test_first_message_authentication(client: httpx.Client, service: Service, user: User) -> None:
    discussion = create_discussion(client, user, "First message [[fake:words=4]]", ["risk"])
    wait_finished(client, user, discussion)
    token = user.headers["Authorization"].removeprefix("Bearer ")
    with connect(bare_url(service, discussion), origin=Origin(ORIGIN), proxy=None) as ws:
        ws.send(json.dumps({"type": "auth", "access_token": token}))
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] != FINISHED:
            events.append(json.loads(ws.recv(timeout=10)))
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))

    stranger = new_user(client)
    stranger_token = stranger.headers["Authorization"].removeprefix("Bearer ")
    for first in (
        {"type": "auth", "access_token": stranger_token},  # a valid token of someone else: not their discussion
        {"type": "auth", "access_token": "not-a-jwt"},
        {"type": "hello"},
    ):
        with connect(bare_url(service, discussion), origin=Origin(ORIGIN), proxy=None) as ws:
            ws.send(json.dumps(first))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, first


def test_silent_client_is_closed_after_the_auth_timeout(client: httpx.Client, service: Service, user: User) -> None:
    discussion = create_discussion(client, user, "Silent [[fake:words=4]]", ["risk"])
    started = time.monotonic()
    with (
        connect(bare_url(service, discussion), origin=Origin(ORIGIN), proxy=None) as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        ws.recv(timeout=20)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert time.monotonic() - started < 15
    wait_finished(client, user, discussion)


def test_a_client_that_stops_reading_is_dropped_and_others_get_everything(
    client: httpx.Client, service: Service, user: User, redis_prefix: str
) -> None:
    discussion = create_discussion(client, user, "Slow reader [[fake:words=3]]", ["risk"])
    wait_finished(client, user, discussion)  # its log is complete; the test appends more events itself
    total = SUBSCRIBER_QUEUE_LIMIT * 3
    text = secrets.token_hex(2048)  # big, incompressible events fill the socket buffers quickly

    async def scenario() -> tuple[list[int], float, int, int | None]:
        redis = Redis.from_url(TEST_REDIS_URL)
        log = EventLog(redis, redis_prefix)
        # An event after its discussion_finished, so that a reconnect at the end is not answered as one past
        # the end of a finished discussion (the final event and a close) but streams what follows.
        start = await log.append(uuid.UUID(discussion), "token", text="", turn_index=-1)
        tickets = [ws_ticket(client, user, discussion) for _ in range(2)]
        # A stalled browser tab: the client library stops reading the socket after one unread frame
        # (max_queue=1) and the socket's receive buffer is small, so the server's sends soon block.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.connect(("127.0.0.1", int(service.url.rsplit(":", 1)[1])))
        sock.setblocking(False)
        slow = await websockets.connect(
            ws_url(service, discussion, tickets[0], start),
            origin=Origin(ORIGIN),
            max_queue=1,
            compression=None,
            sock=sock,
        )
        fast = await websockets.connect(
            ws_url(service, discussion, tickets[1], start), origin=Origin(ORIGIN), compression=None
        )
        received: list[int] = []

        async def read_fast() -> None:
            async for raw in fast:
                event: dict[str, Any] = json.loads(raw)
                received.append(event["seq"])
                if event["type"] == FINISHED:
                    return

        reader = asyncio.create_task(read_fast())
        began = time.monotonic()
        for i in range(total):
            while i - len(received) > SUBSCRIBER_QUEUE_LIMIT // 4:  # a pace a reading client keeps up with
                await asyncio.sleep(0.01)
            await log.append(uuid.UUID(discussion), "token", text=text, turn_index=i)
        await log.append(uuid.UUID(discussion), FINISHED, status="completed")
        await asyncio.wait_for(reader, 60)
        fast_seconds = time.monotonic() - began
        slow_got = 0  # now drain the slow client: it must end early, closed by the server
        code = None
        try:
            async for _ in slow:
                slow_got += 1
        except ConnectionClosed:
            pass
        if slow.close_code is not None:
            code = slow.close_code
        await fast.close()
        await redis.aclose()
        return received, fast_seconds, slow_got, code

    received, fast_seconds, slow_got, code = asyncio.run(scenario())
    first = received[0]
    assert received == list(range(first, first + total + 1))  # the reader got every event, in order
    assert fast_seconds < 30
    assert slow_got < total  # dropped, not merely late
    assert code in (1013, 1006), code  # 1013 when the close frame fit in the buffer, else the socket was cut
