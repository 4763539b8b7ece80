"""/api/health and /metrics."""

from __future__ import annotations

import asyncio
import os
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service import metrics, quota
from service.api.deps import Res
from service.db import DATABASE_ERRORS

router = APIRouter(tags=["ops"])
PROBE_TIMEOUT_SECONDS = 2.0


def _service_version() -> str:
    """SERVICE_VERSION (set by the image build) or, from a source checkout, the project's version."""
    try:
        return os.environ.get("SERVICE_VERSION") or version("cvm-appliance")
    except PackageNotFoundError:
        return "unknown"


SERVICE_VERSION = _service_version()


async def _probe(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await check
    except Exception as exc:
        return {"connected": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    return {"connected": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


@router.get("/api/health")
async def health(res: Res) -> JSONResponse:
    """200 while PostgreSQL answers, 503 otherwise; Redis trouble degrades but does not fail it."""
    database, redis = await asyncio.gather(_probe(res.pool.fetchval("SELECT 1")), _probe(res.redis.ping()))
    ok = database["connected"]
    body = {
        "status": ("ok" if redis["connected"] else "degraded") if ok else "unavailable",
        "database": database,
        "redis": redis,
        "version": SERVICE_VERSION,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


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
