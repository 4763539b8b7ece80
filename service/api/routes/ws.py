"""/ws/discussions/{id}: live discussion events, resumable with ?after=<seq>."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect, status

from service import discussions
from service.api.deps import Resources
from service.metrics import WEBSOCKET_CONNECTIONS
from service.streaming import FINISHED, SlowConsumerError

router = APIRouter()


async def _ticket_user(res: Resources, ticket: str, discussion_id: uuid.UUID) -> uuid.UUID | None:
    """Consume a single-use ticket; the user id if it was issued for this discussion."""
    value = await res.redis.getdel(f"{res.settings.redis_key_prefix}ws-ticket:{ticket}")
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    user, _, discussion = text.partition(":")
    return uuid.UUID(user) if discussion == str(discussion_id) else None


@router.websocket("/ws/discussions/{discussion_id}")
async def discussion_events(
    websocket: WebSocket, discussion_id: uuid.UUID, ticket: str = Query(...), after: int = Query(0, ge=0)
) -> None:
    res: Resources = websocket.app.state.resources
    # Browsers always send Origin; a missing one means a non-browser client, which CSRF cannot abuse.
    origin = websocket.headers.get("origin")
    if origin is not None and origin not in res.settings.cors_origins:
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason="origin not allowed")
        return
    user_id = await _ticket_user(res, ticket, discussion_id)
    # Ownership is re-checked: the discussion may have been deleted since the ticket was issued.
    if user_id is None or not await discussions.owns(res.pool, user_id, discussion_id):
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION, reason="invalid ticket or discussion")
        return
    await websocket.accept()
    WEBSOCKET_CONNECTIONS.inc()
    try:
        async with res.hub.subscribe(discussion_id, after) as events:
            async for event in events:
                await websocket.send_json(event)
                if event["type"] == FINISHED:
                    break
        await websocket.close()
    except SlowConsumerError as exc:
        await websocket.close(code=status.WS_1013_TRY_AGAIN_LATER, reason=str(exc)[:120])
    except WebSocketDisconnect:
        pass
    finally:
        WEBSOCKET_CONNECTIONS.dec()
