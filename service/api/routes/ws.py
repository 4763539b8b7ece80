"""/ws/discussions/{id}: live discussion events, resumable with ?after=<seq>."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import suppress

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect, status
from fastapi.exceptions import WebSocketRequestValidationError

from service import discussions, security, tickets
from service.api.deps import Resources
from service.drain import CLOSE_CODE, CLOSE_REASON, Drain
from service.metrics import WEBSOCKET_CONNECTIONS
from service.streaming import FINISHED, SlowConsumerError, Subscription

router = APIRouter()
CLOSE_TIMEOUT_SECONDS = 2.0
AUTH_MESSAGE_TIMEOUT_SECONDS = 5.0
# Sequence numbers are Redis INCRs; past 2^53 JSON clients lose precision, and Redis refuses ids past 2^64.
MAX_SEQ = 2**53 - 1


async def refuse_invalid_request(websocket: WebSocket, exc: Exception) -> None:
    """A path or query value out of range: accepted, then closed 1008 naming the field, so that a browser (which
    never sees a refused handshake's status) can tell what was wrong."""
    errors = exc.errors() if isinstance(exc, WebSocketRequestValidationError) else []
    first = errors[0] if errors else {"loc": ["request"], "msg": "invalid"}
    reason = f"{first['loc'][-1]}: {first['msg']}".encode()[:123].decode(errors="ignore")  # a close reason's limit
    await websocket.accept()
    await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason=reason)


async def _first_message_user(websocket: WebSocket, res: Resources) -> uuid.UUID | None:
    """The user of an access token sent as the first message, `{"type": "auth", "access_token": "..."}`."""
    try:
        async with asyncio.timeout(AUTH_MESSAGE_TIMEOUT_SECONDS):
            message = await websocket.receive_json()
        token = message["access_token"] if message.get("type") == "auth" else None
        return security.decode_access_token(token, res.settings.jwt_secret) if isinstance(token, str) else None
    except (TimeoutError, ValueError, KeyError, AttributeError, security.InvalidTokenError, WebSocketDisconnect):
        return None


@router.websocket("/ws/discussions/{discussion_id}")
async def discussion_events(
    websocket: WebSocket,
    discussion_id: uuid.UUID,
    ticket: str | None = Query(None, max_length=200),
    after: int = Query(0, ge=0, le=MAX_SEQ),
) -> None:
    """Authenticated by `?ticket=` (single use, from /api/ws-ticket) or, without one, by a first message
    carrying the access token, which must arrive within AUTH_MESSAGE_TIMEOUT_SECONDS of the handshake."""
    res: Resources = websocket.app.state.resources
    # Browsers always send Origin; a missing one means a non-browser client, which CSRF cannot abuse.
    origin = websocket.headers.get("origin")
    if origin is not None and origin not in res.settings.cors_origins:
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason="origin not allowed")
        return
    if ticket is not None:
        user_id = await tickets.consume(res.redis, res.settings.redis_key_prefix, ticket, discussion_id)
    else:
        await websocket.accept()
        user_id = await _first_message_user(websocket, res)
    # Ownership is re-checked: the discussion may have been deleted since the ticket was issued.
    state = await discussions.status_for_user(res.pool, user_id, discussion_id) if user_id is not None else None
    if state is None:
        reason = "invalid ticket or discussion" if ticket is not None else "invalid auth message or discussion"
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason=reason)
        return
    if ticket is not None:
        await websocket.accept()
    if await _answered_past_the_end(websocket, res, discussion_id, state, after):
        return
    WEBSOCKET_CONNECTIONS.inc()
    drain: Drain = websocket.app.state.drain
    try:
        with drain.holding():
            async with res.hub.subscribe(discussion_id, after) as sub:
                await _serve(websocket, sub, drain)
    finally:
        WEBSOCKET_CONNECTIONS.dec()


async def _answered_past_the_end(
    websocket: WebSocket, res: Resources, discussion_id: uuid.UUID, state: str, after: int
) -> bool:
    """Close a socket that has nothing to wait for (True), instead of leaving it silent forever: past the end of a
    finished discussion it gets the final event and a normal close; past the last event of a running one, 1008."""
    last = await res.events.last_event(discussion_id)
    code, reason = status.WS_1000_NORMAL_CLOSURE, ""
    if last is not None and last["type"] == FINISHED and after >= last["seq"]:
        await websocket.send_json(last)
    elif last is None and state not in discussions.ACTIVE_STATUSES:
        reason = f"discussion finished and its events are no longer kept; GET /api/discussions/{discussion_id}"
    elif after > (last["seq"] if last else 0):
        code = status.WS_1008_POLICY_VIOLATION
        reason = f"after={after} is past the last event ({last['seq'] if last else 0}); reconnect with a seq you got"
    else:
        return False
    with suppress(Exception):  # the peer may already be gone
        await asyncio.wait_for(websocket.close(code=code, reason=reason), CLOSE_TIMEOUT_SECONDS)
    return True


async def _serve(websocket: WebSocket, sub: Subscription, drain: Drain) -> None:
    """Send events until the discussion finishes, the client leaves or stops reading, or the worker drains."""

    async def send_events() -> None:
        async for event in sub.events():
            await websocket.send_json(event)
            if event["type"] == FINISHED:
                return

    async def client_left() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass  # clients have nothing to say; reading is how a disconnect is noticed while idle

    sender = asyncio.create_task(send_events())
    listener = asyncio.create_task(client_left())
    # A send blocked on a client that stopped reading never gets to notice the overflow itself.
    overflow = asyncio.create_task(sub.dropped.wait())
    draining = asyncio.create_task(drain.grace_over())
    done, pending = await asyncio.wait({sender, listener, overflow, draining}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    error = sender.exception() if sender in done else None
    if listener in done or isinstance(error, WebSocketDisconnect):
        return  # the client is gone
    if error is not None and not isinstance(error, SlowConsumerError):
        raise error
    code, reason = status.WS_1000_NORMAL_CLOSURE, ""
    if sub.dropped.is_set():
        code, reason = status.WS_1013_TRY_AGAIN_LATER, "client stopped reading; reconnect with ?after=<seq>"
    elif draining in done and sender not in done:
        code, reason = CLOSE_CODE, CLOSE_REASON
        with suppress(Exception):
            await asyncio.wait_for(websocket.send_json(drain.hint()), CLOSE_TIMEOUT_SECONDS)
    with suppress(Exception):  # the peer may already be gone; closing is best effort
        await asyncio.wait_for(websocket.close(code=code, reason=reason), CLOSE_TIMEOUT_SECONDS)
