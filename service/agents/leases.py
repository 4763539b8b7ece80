"""Discussion leases: the row-level claim a worker holds on a discussion it runs, in PostgreSQL.

The owner renews its lease while it runs the discussion; a worker that stops renewing (crashed, drained) loses it
once it expires, and any worker's reaper claims it and resumes the discussion. Only an active discussion
(discussions.ACTIVE_STATUSES) is leased; finishing it ends the lease.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from service.discussions import ACTIVE_STATUSES

REAP_BATCH = 10  # discussions one reaper pass claims at most, so one worker does not take a whole crash's load


async def renew(pool: asyncpg.Pool, discussion_id: uuid.UUID, worker_id: str, seconds: float) -> bool:
    """Extend the lease by `seconds` from now; False when `worker_id` no longer holds it."""
    held = await pool.fetchval(
        "UPDATE discussions SET lease_expires_at = now() + make_interval(secs => $3)"
        " WHERE id = $1 AND lease_owner = $2 RETURNING true",
        discussion_id,
        worker_id,
        seconds,
    )
    return bool(held)


async def expire(pool: asyncpg.Pool, worker_id: str, discussion_id: uuid.UUID | None = None) -> None:
    """End the worker's leases (or its lease on one discussion) now, so the next reaper pass resumes them."""
    await pool.execute(
        "UPDATE discussions SET lease_expires_at = now()"
        " WHERE lease_owner = $1 AND status = ANY($2) AND ($3::uuid IS NULL OR id = $3)",
        worker_id,
        list(ACTIVE_STATUSES),
        discussion_id,
    )


async def claim_expired(pool: asyncpg.Pool, worker_id: str, seconds: float) -> list[uuid.UUID]:
    """Take over active discussions whose lease expired; their ids. Concurrent reapers skip each other's rows."""
    rows = await pool.fetch(
        "UPDATE discussions SET lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2)"
        " WHERE id IN (SELECT id FROM discussions WHERE status = ANY($3) AND lease_expires_at < now()"
        " FOR UPDATE SKIP LOCKED LIMIT $4) RETURNING id",
        worker_id,
        seconds,
        list(ACTIVE_STATUSES),
        REAP_BATCH,
    )
    return [r["id"] for r in rows]


async def leased_discussion(pool: asyncpg.Pool, discussion_id: uuid.UUID, worker_id: str) -> asyncpg.Record | None:
    """The discussion's row as its owner runs it, or None when `worker_id` does not hold its lease."""
    return await pool.fetchrow(
        "SELECT id, user_id, topic, panel, max_rounds, token_budget, tokens_used, status,"
        " extract(epoch FROM created_at)::float8 AS created"
        " FROM discussions WHERE id = $1 AND lease_owner = $2",
        discussion_id,
        worker_id,
    )


async def finish(
    pool: asyncpg.Pool,
    discussion_id: uuid.UUID,
    worker_id: str,
    status: str,
    verdict: dict[str, Any] | None,
    error: str | None,
) -> bool:
    """The owner's last write: the final status, and the lease ends. False when the lease had moved on, so the
    new owner finishes the discussion instead."""
    finished = await pool.fetchval(
        "UPDATE discussions SET status = $3, verdict = $4, error = $5, finished_at = now(), lease_owner = NULL"
        " WHERE id = $1 AND lease_owner = $2 RETURNING true",
        discussion_id,
        worker_id,
        status,
        verdict,
        error,
    )
    return bool(finished)
