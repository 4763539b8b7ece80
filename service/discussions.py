"""Discussion and message rows. The API's queries are scoped by user_id (another user's id reads as absent); the
worker's (the end of this module) take the id of a discussion whose lease it holds (agents/leases.py)."""

from __future__ import annotations

import uuid
from dataclasses import astuple, dataclass, fields
from typing import Any

import asyncpg

from service import quota
from service.settings import Settings

# Statuses in which a worker is (or should be) running the discussion.
ACTIVE_STATUSES = ("running", "stopping")
DISCUSSION_COLUMNS = (
    "id, topic, panel, max_rounds, token_budget, status, verdict, error, tokens_used, created_at, finished_at"
)
MESSAGE_COLUMNS = "id, turn_index, round, role, status, content, reasoning, error, created_at"


class DiscussionBusyError(Exception):
    """The discussion is still running; stop it and wait for it to finish first."""


async def create(
    pool: asyncpg.Pool,
    settings: Settings,
    user_id: uuid.UUID,
    topic: str,
    panel: list[str],
    max_rounds: int,
    token_budget: int,
    worker_id: str,
) -> dict[str, Any]:
    """A running discussion leased to `worker_id`; quota.QuotaExceededError when its budget does not fit in what
    is left of today's limits, quota.AccountDisabledError for a disabled account."""
    now = quota.local_now()
    refused = (await quota.day_usage(pool, settings, user_id, now)).refusal(token_budget, now)
    if refused is not None:
        raise refused
    row = await pool.fetchrow(
        "INSERT INTO discussions (user_id, topic, panel, max_rounds, token_budget, status, lease_owner,"
        " lease_expires_at) VALUES ($1, $2, $3, $4, $5, 'running', $6, now() + make_interval(secs => $7))"
        " RETURNING *",
        user_id,
        topic,
        panel,
        max_rounds,
        token_budget,
        worker_id,
        settings.discussion_lease_seconds,
    )
    assert row is not None
    return dict(row)


async def list_for_user(pool: asyncpg.Pool, user_id: uuid.UUID, limit: int, offset: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        f"SELECT {DISCUSSION_COLUMNS} FROM discussions WHERE user_id = $1"  # noqa: S608 - constant columns
        " ORDER BY created_at DESC, id LIMIT $2 OFFSET $3",
        user_id,
        limit,
        offset,
    )
    return [dict(r) for r in rows]


async def get_for_user(pool: asyncpg.Pool, user_id: uuid.UUID, discussion_id: uuid.UUID) -> dict[str, Any] | None:
    """The discussion with its messages in turn order, or None if it is not this user's."""
    row = await pool.fetchrow(
        f"SELECT {DISCUSSION_COLUMNS} FROM discussions WHERE id = $1 AND user_id = $2",  # noqa: S608 - constant columns
        discussion_id,
        user_id,
    )
    if row is None:
        return None
    messages = await pool.fetch(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE discussion_id = $1 ORDER BY turn_index",  # noqa: S608
        discussion_id,
    )
    return {**dict(row), "messages": [dict(m) for m in messages]}


async def owns(pool: asyncpg.Pool, user_id: uuid.UUID, discussion_id: uuid.UUID) -> bool:
    return await status_for_user(pool, user_id, discussion_id) is not None


async def status_for_user(pool: asyncpg.Pool, user_id: uuid.UUID, discussion_id: uuid.UUID) -> str | None:
    """The discussion's status, or None if it is not this user's."""
    return await pool.fetchval(  # type: ignore[no-any-return]
        "SELECT status FROM discussions WHERE id = $1 AND user_id = $2", discussion_id, user_id
    )


async def mark_stopping(pool: asyncpg.Pool, user_id: uuid.UUID, discussion_id: uuid.UUID) -> str | None:
    """Ask a running discussion to stop; return its status afterwards, None if not this user's."""
    return await pool.fetchval(  # type: ignore[no-any-return]
        "UPDATE discussions SET status = CASE WHEN status = 'running' THEN 'stopping' ELSE status END"
        " WHERE id = $1 AND user_id = $2 RETURNING status",
        discussion_id,
        user_id,
    )


async def stop_all_for_user(pool: asyncpg.Pool, user_id: uuid.UUID) -> list[uuid.UUID]:
    """Ask every running discussion of the user to stop; their ids (the caller tells the workers)."""
    rows = await pool.fetch(
        "UPDATE discussions SET status = 'stopping' WHERE user_id = $1 AND status = 'running' RETURNING id", user_id
    )
    return [r["id"] for r in rows]


async def active_count_for_user(pool: asyncpg.Pool, user_id: uuid.UUID) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM discussions WHERE user_id = $1 AND status = ANY($2)", user_id, list(ACTIVE_STATUSES)
        )
    )


async def ids_for_user(pool: asyncpg.Pool, user_id: uuid.UUID) -> list[uuid.UUID]:
    return [r["id"] for r in await pool.fetch("SELECT id FROM discussions WHERE user_id = $1", user_id)]


async def delete(pool: asyncpg.Pool, user_id: uuid.UUID, discussion_id: uuid.UUID) -> bool:
    """Delete a finished discussion; False if not this user's; DiscussionBusyError while it runs."""
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.fetchval(
            "SELECT status FROM discussions WHERE id = $1 AND user_id = $2 FOR UPDATE", discussion_id, user_id
        )
        if status is None:
            return False
        if status in ACTIVE_STATUSES:
            raise DiscussionBusyError("discussion is still running; POST .../stop and wait for it to finish")
        await conn.execute("DELETE FROM discussions WHERE id = $1", discussion_id)
        return True


async def usage_for_user(pool: asyncpg.Pool, user_id: uuid.UUID) -> dict[str, int]:
    row = await pool.fetchrow(
        "SELECT coalesce(sum(prompt_tokens), 0) AS prompt_tokens,"
        " coalesce(sum(completion_tokens), 0) AS completion_tokens,"
        " coalesce(sum(cache_hit_tokens), 0) AS cache_hit_tokens, count(*) AS turns"
        " FROM token_usage WHERE user_id = $1",
        user_id,
    )
    assert row is not None  # an aggregate always returns one row
    return {k: int(v) for k, v in row.items()}


# --- the worker's side: a discussion it runs -------------------------------------------------------------------
@dataclass(frozen=True)
class TurnMessage:
    """What one turn said, as its `messages` row holds it besides the row's keys and time (the API shows these
    fields as they are)."""

    turn_index: int
    round: int
    role: str
    status: str
    content: str
    reasoning: str | None
    error: str | None


@dataclass(frozen=True)
class StoredTurn:
    """One ended turn as it is persisted: its message and what it cost."""

    discussion_id: uuid.UUID
    user_id: uuid.UUID
    message: TurnMessage
    prompt_tokens: int
    completion_tokens: int
    cache_hit_tokens: int


async def status(pool: asyncpg.Pool, discussion_id: uuid.UUID) -> str | None:
    return await pool.fetchval("SELECT status FROM discussions WHERE id = $1", discussion_id)  # type: ignore[no-any-return]


async def messages(pool: asyncpg.Pool, discussion_id: uuid.UUID) -> list[asyncpg.Record]:
    """Every stored message of the discussion, in turn order."""
    return await pool.fetch("SELECT * FROM messages WHERE discussion_id = $1 ORDER BY turn_index", discussion_id)


async def message(pool: asyncpg.Pool, discussion_id: uuid.UUID, turn_index: int) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT * FROM messages WHERE discussion_id = $1 AND turn_index = $2", discussion_id, turn_index
    )
    assert row is not None, "callers only ask for stored turns"
    return dict(row)


# A stored turn's row of `messages`: its discussion, its user, then TurnMessage's fields in their order.
_MESSAGE_INSERT_COLUMNS = ("discussion_id", "user_id", *(field.name for field in fields(TurnMessage)))
_INSERT_MESSAGE = (
    f"INSERT INTO messages ({', '.join(_MESSAGE_INSERT_COLUMNS)})"  # noqa: S608 - the columns are constants
    f" VALUES ({', '.join(f'${n}' for n in range(1, len(_MESSAGE_INSERT_COLUMNS) + 1))})"
    " ON CONFLICT (discussion_id, turn_index) DO NOTHING RETURNING *"
)


async def store_turn(pool: asyncpg.Pool, turn: StoredTurn) -> dict[str, Any] | None:
    """Persist the message, its token usage and the discussion's tokens_used together; None (and nothing written)
    when the turn is stored already: another owner stored it first, and the first one stays."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            _INSERT_MESSAGE,
            turn.discussion_id,
            turn.user_id,
            *astuple(turn.message),
        )
        if row is None:
            return None
        await conn.execute(
            "INSERT INTO token_usage (user_id, discussion_id, prompt_tokens, completion_tokens,"
            " cache_hit_tokens) VALUES ($1, $2, $3, $4, $5)",
            turn.user_id,
            turn.discussion_id,
            turn.prompt_tokens,
            turn.completion_tokens,
            turn.cache_hit_tokens,
        )
        await conn.execute(
            "UPDATE discussions SET tokens_used = tokens_used + $2 WHERE id = $1",
            turn.discussion_id,
            turn.prompt_tokens + turn.completion_tokens,
        )
    return dict(row)
