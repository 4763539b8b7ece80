"""App factory: `gunicorn -c service/gunicorn_conf.py` runs `service.main:create_app()` in each worker."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI
from fastapi.exceptions import WebSocketRequestValidationError
from fastapi.telemetry import TelemetryConfig
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry as SyncRetry

from service.agents.orchestration import Orchestrator
from service.agents.slots import AgentSlots
from service.api.deps import Resources
from service.api.routes import account, auth, discussions, files, health, ws
from service.client_address import ClientAddress
from service.cors import CrossOriginOnly
from service.db import create_pool
from service.drain import Drain
from service.llm import LlmClient
from service.logging import configure_logging
from service.metrics import AgentSlotsCollector, RedisMemory
from service.request_context import AccessLog, RequestContextMiddleware
from service.settings import Settings, load_settings
from service.standby import Standby
from service.static_routes import StaticRoutes
from service.storage import ArtifactStore, blobs_for
from service.streaming import EventHub, EventLog

REDIS_POOL_SIZE = 100  # per worker
# A Redis restart breaks every pooled connection, and redis-py's asyncio client retries nothing by default: the
# next command on each stale connection failed, and with it the turn and its discussion (tests/e2e/test_faults.py).
# A ConnectionError is retried on a new connection for up to ~4 s (0.2 s doubling, capped at 1 s), which spans
# a restart; a command that reached a Redis that then died unanswered may run twice (docs/reliability.md).
REDIS_BACKOFF, REDIS_RETRIES = ExponentialBackoff(cap=1.0, base=0.1), 6


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    access_log = AccessLog()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings.database_url)
        # Blocking pool: a burst of WebSocket handshakes waits for a connection instead of failing
        # (redis-py's default pool raises "Too many connections" past 100).
        client = Redis.from_pool(
            BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=REDIS_POOL_SIZE,
                timeout=10,
                retry=Retry(REDIS_BACKOFF, REDIS_RETRIES),
                retry_on_error=[redis.ConnectionError],
            )
        )
        events = EventLog(client, settings.redis_key_prefix)
        slots = AgentSlots(
            client,
            settings.redis_key_prefix,
            settings.max_concurrent_agents,
            settings.discussion_lease_seconds,
        )
        llm = LlmClient(settings, client)
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        orchestrator = Orchestrator(pool, client, settings, llm, slots, events, worker_id)
        sync_client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=2,
            retry=SyncRetry(REDIS_BACKOFF, REDIS_RETRIES),
            retry_on_error=[redis.ConnectionError],
        )
        app.state.redis_collectors = (
            AgentSlotsCollector(sync_client, slots.holders_key, slots.queue_key),
            RedisMemory(sync_client),
        )
        app.state.resources = Resources(
            settings=settings,
            pool=pool,
            redis=client,
            events=events,
            hub=EventHub(events),
            orchestrator=orchestrator,
            store=ArtifactStore(
                pool, blobs_for(settings), settings.artifact_storage_path / ".spool", settings.max_upload_bytes
            ),
        )
        orchestrator.start()
        standby = asyncio.create_task(Standby(settings.standby_file, app.state.drain, orchestrator).follow())
        try:
            yield
        finally:
            standby.cancel()
            access_log.flush()
            await orchestrator.close()
            await llm.close()
            await pool.close()
            await client.aclose()
            sync_client.close()

    # FastAPI's own OpenTelemetry hooks cost a provider lookup per request; metrics here are Prometheus.
    no_otel: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(title="cvm multi-agent service", lifespan=lifespan, telemetry=no_otel)
    app.state.drain = Drain(settings.ws_drain_seconds)  # started by service.worker on shutdown
    # Middleware, innermost first: static answers, CORS, then request id / log / metrics around all of it.
    app.add_middleware(StaticRoutes, json_bodies={"/api/roles": discussions.ROLES_JSON})
    app.add_middleware(
        CrossOriginOnly,
        allow_origins=list(settings.cors_origins),
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        expose_headers=["X-Request-ID"],
    )
    app.add_middleware(RequestContextMiddleware, access_log=access_log)
    # Outermost: everything inside, the rate limits and the request log included, sees the real client.
    app.add_middleware(ClientAddress, trusted=settings.trusted_proxies)
    # The routes themselves, not include_router(): an included router is matched route by route through
    # a per-router context on every request, which cost ~13 us a request here (bench/README.md).
    for module in (auth, account, discussions, files, health, ws):
        app.router.routes.extend(module.router.routes)
    app.add_exception_handler(WebSocketRequestValidationError, ws.refuse_invalid_request)
    return app
