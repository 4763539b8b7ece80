"""/api/health and /metrics."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Awaitable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import metrics, quota
from service.api.deps import Res, Resources
from service.data_targets import database_target, redis_target
from service.db import DATABASE_ERRORS

router = APIRouter(tags=["ops"])
PROBE_TIMEOUT_SECONDS = 2.0
# The server's own word on whether this session is encrypted: pg_stat_ssl's column, for this backend alone (the
# view itself reads every backend's row).
SESSION_USES_TLS = "SELECT ssl FROM pg_stat_get_activity(pg_backend_pid())"
NO_RETRY = Retry(NoBackoff(), 0)
# A handshake on loopback or in a VPC takes milliseconds; with the probe's 2 s the answer stays within the
# deploy gate's 3 s (appliance/release_commands.py).
TLS_DIAGNOSIS_SECONDS = 0.8


def _service_version() -> str:
    """SERVICE_VERSION (set by the release's Compose file) or, from a source checkout, the project's version."""
    try:
        return os.environ.get("SERVICE_VERSION") or version("cvm-appliance")
    except PackageNotFoundError:
        return "unknown"


SERVICE_VERSION = _service_version()


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


async def _probe(check: Awaitable[Any]) -> tuple[dict[str, Any], Any]:
    """How a data service answered `check` (connected, latency or a one-line error), and its answer."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            answer = await check
    except Exception as exc:
        return {"connected": False, "error": _one_line(exc)}, exc
    return {"connected": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}, answer


async def _database(res: Resources) -> dict[str, Any]:
    """PostgreSQL's answer, where it is and whether TLS is on (the server's own word) and verified."""
    target = database_target(res.settings.database_url)
    result, answer = await _probe(res.pool.fetchval(SESSION_USES_TLS))
    encrypted = answer is True
    tls = target.tls if encrypted or not result["connected"] else "off"
    return {**result, "target": target.address, "tls": tls, "tls_verified": encrypted and target.verifies}


async def _redis(res: Resources) -> tuple[dict[str, Any], bool]:
    """Redis's answer, where it is and its TLS check; True when TLS to it failed (a refused certificate or no
    handshake at all: a plaintext-only server), which a pool's retries would otherwise hide behind a timeout."""
    target = redis_target(res.settings.redis_url)
    result, _ = await _probe(res.redis.ping())
    body = {
        **result,
        "target": target.address,
        "tls": target.tls,
        "tls_verified": result["connected"] and target.verifies,
    }
    if result["connected"] or target.tls == "off":
        return body, False
    # One connection, no retries: its own error says why (the pool's retries outlast the probe's timeout).
    single = Redis.from_url(res.settings.redis_url, retry=NO_RETRY, socket_connect_timeout=TLS_DIAGNOSIS_SECONDS)
    try:
        await single.ping()
    except (ssl.SSLError, RedisConnectionError, RedisTimeoutError) as exc:
        chain = [exc, exc.__cause__, exc.__context__]
        silent = isinstance(exc, RedisTimeoutError)
        error = f"no TLS handshake within {TLS_DIAGNOSIS_SECONDS} s, a plaintext-only server? " if silent else ""
        return {**body, "error": error + _one_line(exc)}, silent or any(isinstance(e, ssl.SSLError) for e in chain)
    finally:
        await single.aclose()
    return body, False


@router.get("/api/health")
async def health(request: Request, res: Res) -> JSONResponse:
    """200 while PostgreSQL answers, 503 otherwise, or when TLS to Redis fails (a wrong CA, a plaintext server:
    never a silent downgrade); other Redis trouble degrades but does not fail it. `reason` is one line.

    One probe in flight per worker: a request that arrives while one runs gets that probe's answer. A burst (a CLB's
    several checkers, a load test, the first requests after a deploy's switch) so costs the worker one pooled
    connection and one query, not one each: each its own probe, a burst opened up to the pool's 10 connections at
    once, and on a starved CPU (the scale-out rig at load 13-21) answers took 2.5-7 s, past the probe's 2 s, and
    were 503s with the database up."""
    state = request.app.state
    running: asyncio.Task[tuple[dict[str, Any], int]] | None = getattr(state, "health_probe", None)
    if running is None or running.done():
        running = state.health_probe = asyncio.create_task(_answer(res))
    body, status_code = await asyncio.shield(running)  # a client that leaves does not cancel the others' answer
    return JSONResponse(body, status_code=status_code)


async def _answer(res: Resources) -> tuple[dict[str, Any], int]:
    """The health answer and its status code."""
    database, (redis, redis_tls_failed) = await asyncio.gather(_database(res), _redis(res))
    ok = database["connected"] and not redis_tls_failed
    body: dict[str, Any] = {
        "status": ("ok" if redis["connected"] else "degraded") if ok else "unavailable",
        "database": database,
        "redis": redis,
        "version": SERVICE_VERSION,
    }
    if not ok:
        failed, name = (database, "database") if not database["connected"] else (redis, "redis")
        body["reason"] = f"{name} {failed['target']} (tls {failed['tls']}): {failed['error']}"
    return body, 200 if ok else 503


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request, res: Res) -> Response:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            spent: int | None = await quota.service_tokens_today(res.pool, quota.local_now())
    except (*DATABASE_ERRORS, TimeoutError):
        spent = None  # the other metrics still answer; ApiUnhealthy tells of the database
    daily = metrics.DailyTokens(spent, res.settings.daily_token_ceiling)
    # Reading the multiprocess files and Redis blocks, so it runs off the event loop.
    body = await asyncio.to_thread(metrics.render, *request.app.state.redis_collectors, daily)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
