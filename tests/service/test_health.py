"""/api/health goes 503 when PostgreSQL stops and back to 200 when it starts, on a throwaway cluster."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from service.migrate import apply_migrations
from tests.service.stack import (
    FakeLlm,
    Service,
    free_port,
    running_service,
    service_env,
    spawn_service,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.integration
PG_BIN = Path("/usr/lib/postgresql/15/bin")


class ThrowawayPostgres:
    """A private PostgreSQL cluster on a spare port, run as the postgres user when we are root."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pg-health-", dir="/tmp"))
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(PG_BIN / tool), *args], check=True, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-o", options, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")


@pytest.fixture(scope="module")
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    pg = ThrowawayPostgres()
    pg.start()
    try:
        yield pg
    finally:
        subprocess.run(
            [*pg.as_user, str(PG_BIN / "pg_ctl"), "-D", str(pg.dir / "data"), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(pg.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_service(
    throwaway_pg: ThrowawayPostgres,
    redis_prefix: str,
    fake_llm: FakeLlm,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    asyncio.run(apply_migrations(throwaway_pg.url))
    tmp = tmp_path_factory.mktemp("health")
    with running_service(service_env(throwaway_pg.url, f"{redis_prefix}health:", fake_llm, tmp), tmp / "log") as svc:
        yield svc


def health(service: Service) -> httpx.Response:
    # A fresh connection each time, so both workers get asked.
    with httpx.Client(base_url=service.url, timeout=10) as client:
        return client.get("/api/health")


def test_health_503_while_postgres_is_down_then_recovers(throwaway_pg: ThrowawayPostgres, pg_service: Service) -> None:
    up = health(pg_service)
    assert up.status_code == 200
    body = up.json()
    assert body["status"] == "ok" and body["database"]["connected"] and body["redis"]["connected"]
    assert body["database"]["latency_ms"] >= 0 and body["version"]

    throwaway_pg.stop()
    wait_until(lambda: health(pg_service).status_code == 503, 20, "health to report 503")
    down = health(pg_service).json()
    assert down["status"] == "unavailable" and down["database"]["connected"] is False
    assert down["redis"]["connected"] is True

    throwaway_pg.start()
    wait_until(lambda: all(health(pg_service).status_code == 200 for _ in range(6)), 45, "health to recover")


def test_service_boots_while_postgres_is_down_and_recovers(
    throwaway_pg: ThrowawayPostgres, redis_prefix: str, fake_llm: FakeLlm, tmp_path: Path
) -> None:
    throwaway_pg.stop()
    env = service_env(throwaway_pg.url, f"{redis_prefix}health-boot:", fake_llm, tmp_path)
    service = spawn_service(env, tmp_path / "log")
    url = f"{service.url}/api/health"
    try:
        wait_until(lambda: httpx.get(url).status_code == 503, 60, "a booted worker answering 503")
        throwaway_pg.start()
        wait_until(lambda: all(httpx.get(url).status_code == 200 for _ in range(6)), 45, "health to recover")
        assert service.proc.poll() is None
    finally:
        stop_process(service.proc, timeout=40)


def test_a_burst_of_health_checks_shares_one_probe_per_worker(
    throwaway_pg: ThrowawayPostgres, pg_service: Service
) -> None:
    """60 checks at once: every one answers 200, and the workers open no new database connection for them (each
    its own probe opened up to the pool's 10 per worker)."""
    assert all(health(pg_service).status_code == 200 for _ in range(4))  # each worker's pool has its connection
    started: datetime = asyncio.run(_fetchval(throwaway_pg.url, "SELECT now()"))
    start = threading.Barrier(60)

    def check(_: int) -> int:
        with httpx.Client(base_url=pg_service.url, timeout=30) as client:
            start.wait()
            return client.get("/api/health").status_code

    with ThreadPoolExecutor(60) as pool:
        codes = list(pool.map(check, range(60)))
    opened = asyncio.run(_fetchval(throwaway_pg.url, NEW_CLIENTS, started))
    assert codes == [200] * 60, codes
    assert opened <= 1, f"{opened} database connections opened for 60 health checks"


# Client connections opened since $1 (the asking one aside).
NEW_CLIENTS = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE backend_type = 'client backend' AND backend_start > $1 AND pid <> pg_backend_pid()"
)


async def _fetchval(url: str, query: str, *args: object) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()
