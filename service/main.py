"""App factory: `gunicorn -c service/gunicorn_conf.py` runs `service.main:create_app()` in each worker."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from redis.asyncio import BlockingConnectionPool, Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.agents.orchestration import Orchestrator
from service.agents.slots import AgentSlots
from service.api.deps import Resources
from service.api.routes import auth, discussions, files, health, ws
from service.db import create_pool
from service.drain import Drain
from service.llm import LlmClient
from service.logging import configure_logging, request_id
from service.metrics import HTTP_REQUEST_DURATION, AgentSlotsCollector
from service.settings import Settings, load_settings
from service.storage import ArtifactStore, blobs_for
from service.streaming import EventHub, EventLog

log = logging.getLogger("service.http")
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
REDIS_POOL_SIZE = 100  # per worker


class RequestContextMiddleware:
    """Per request: an id (accepted from / returned in X-Request-ID), a JSON log line, a duration metric."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status_code = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            # The route template, never the raw path: ids in labels would explode cardinality.
            template = getattr(route, "path", "unmatched")
            HTTP_REQUEST_DURATION.labels(scope["method"], template, str(status_code)).observe(elapsed)
            log.info(
                "request",
                extra={
                    "fields": {
                        "method": scope["method"],
                        "route": template,
                        "status": status_code,
                        "duration_ms": round(elapsed * 1000, 2),
                    }
                },
            )
            request_id.reset(token)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings.database_url)
        # Blocking pool: a burst of WebSocket handshakes waits for a connection instead of failing
        # (redis-py's default pool raises "Too many connections" past 100).
        client = Redis.from_pool(
            BlockingConnectionPool.from_url(settings.redis_url, max_connections=REDIS_POOL_SIZE, timeout=10)
        )
        events = EventLog(client, settings.redis_key_prefix)
        slots = AgentSlots(
            client,
            settings.redis_key_prefix,
            settings.max_concurrent_agents,
            settings.discussion_lease_seconds,
        )
        llm = LlmClient(settings)
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        orchestrator = Orchestrator(pool, client, settings, llm, slots, events, worker_id)
        sync_client = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
        app.state.slots_collector = AgentSlotsCollector(sync_client, slots.holders_key, slots.queue_key)
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
        try:
            yield
        finally:
            await orchestrator.close()
            await llm.close()
            await pool.close()
            await client.aclose()
            sync_client.close()

    app = FastAPI(title="cvm multi-agent service", lifespan=lifespan)
    app.state.drain = Drain(settings.ws_drain_seconds)  # started by service.worker on shutdown
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        expose_headers=["X-Request-ID"],
    )
    app.add_middleware(RequestContextMiddleware)
    for module in (auth, discussions, files, health, ws):
        app.include_router(module.router)
    return app
