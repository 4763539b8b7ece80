"""asyncpg connection pool."""

from __future__ import annotations

import json

import asyncpg

# What a lost or unreachable database raises: retried by background loops, never fatal to them.
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns come back as Python objects, not strings.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(database_url: str) -> asyncpg.Pool:
    """A small pool; a dead connection is dropped by asyncpg and reopened on next use.

    min_size=0 opens no connection up front, so a worker boots (and /api/health answers 503) even while
    PostgreSQL is down: with gunicorn, a worker that fails to boot takes the whole server down.
    """
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=10, command_timeout=10, init=_init_connection)
    assert pool is not None
    return pool
