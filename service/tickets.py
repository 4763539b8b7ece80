"""Single-use WebSocket tickets: browsers cannot send headers on a WebSocket, so /api/ws-ticket issues one and
/ws/discussions/{id} consumes it. A ticket names one user and one discussion and lives TTL_SECONDS in Redis."""

from __future__ import annotations

import secrets
import uuid

from redis.asyncio import Redis

TTL_SECONDS = 30


def _key(prefix: str, ticket: str) -> str:
    return f"{prefix}ws-ticket:{ticket}"


async def issue(redis: Redis, prefix: str, user_id: uuid.UUID, discussion_id: uuid.UUID) -> str:
    """A new ticket for `user_id` to follow `discussion_id`."""
    ticket = secrets.token_urlsafe(24)
    await redis.set(_key(prefix, ticket), f"{user_id}:{discussion_id}", ex=TTL_SECONDS)
    return ticket


async def consume(redis: Redis, prefix: str, ticket: str, discussion_id: uuid.UUID) -> uuid.UUID | None:
    """The user a ticket was issued to, if it was issued for this discussion; it is gone afterwards either way."""
    value = await redis.getdel(_key(prefix, ticket))
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    user, _, discussion = text.partition(":")
    return uuid.UUID(user) if discussion == str(discussion_id) else None
