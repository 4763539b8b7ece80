"""The stack the service tests run: a scratch database and Redis prefix, the fake LLM and gunicorn, all on loopback."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import redis

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql://appliance_test:appliance_test@127.0.0.1:5432/postgres"
)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REJECTED_KEY = "sk-revoked"
ORIGIN = "http://app.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(TEST_DATABASE_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def scratch_database(prefix: str = "svc_test") -> Iterator[str]:
    """An empty database with a random name on the test server, dropped on exit."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(TEST_DATABASE_URL, name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


@contextmanager
def scratch_redis_prefix(name: str = "test") -> Iterator[str]:
    """A random Redis key prefix; its keys are deleted on exit."""
    prefix = f"{name}:{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(TEST_REDIS_URL)
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


@dataclass
class FakeLlm:
    base_url: str  # the OpenAI-compatible root, .../v1
    admin_url: str

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.admin_url}/stats").json()  # type: ignore[no-any-return]

    def reset(self) -> None:
        httpx.post(f"{self.admin_url}/reset").raise_for_status()

    def queue_faults(self, *faults: dict[str, Any]) -> None:
        httpx.post(f"{self.admin_url}/faults", json={"faults": list(faults)}).raise_for_status()


@contextmanager
def running_fake_llm() -> Iterator[FakeLlm]:
    """`python -m service.fakellm` on a free port, rejecting REJECTED_KEY with 401."""
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "service.fakellm", "--port", str(port), "--reject-key", REJECTED_KEY], cwd=REPO
    )
    llm = FakeLlm(base_url=f"http://127.0.0.1:{port}/v1", admin_url=f"http://127.0.0.1:{port}/admin")
    try:
        wait_until(lambda: httpx.get(f"{llm.admin_url}/stats").status_code == 200, 15, "the fake LLM")
        yield llm
    finally:
        stop_process(proc)


def service_env(database_url: str, redis_prefix: str, fake_llm: FakeLlm, tmp: Path, **overrides: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL,
        "REDIS_KEY_PREFIX": redis_prefix,
        "AI_MODEL_BASE_URL": fake_llm.base_url,
        "AI_API_KEY": f"{REJECTED_KEY},sk-test-good",
        "JWT_SECRET": "x" * 48,
        "CORS_ORIGINS": ORIGIN,
        "ARTIFACT_STORAGE_PATH": str(tmp / "artifacts"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom"),
        "MAX_CONCURRENT_AGENTS": "3",
        "AGENT_TIMEOUT": "4",
        "WORKFLOW_TIMEOUT": "120",
        "DISCUSSION_LEASE_SECONDS": "3",
        "LOGIN_MAX_ATTEMPTS_PER_IP": "1000",
        "TRUSTED_PROXIES": "127.0.0.1",  # the tests play nginx: their X-Real-IP names the client
        "REGISTRATION_MODE": "open",  # the service's default is closed; these tests sign users up freely
        "WEB_CONCURRENCY": "2",
        "LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


@dataclass
class Service:
    url: str
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log_path: Path

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]


def spawn_service(env: dict[str, str], log_path: Path) -> Service:
    """gunicorn on a free loopback port, not waited for; its stderr (JSON log lines) goes to `log_path`."""
    port = free_port()
    env = {**env, "BIND": f"127.0.0.1:{port}"}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", "gunicorn", "-c", str(REPO / "service" / "gunicorn_conf.py")],
            cwd=REPO,
            env=env,
            stderr=log,
        )
    return Service(url=f"http://127.0.0.1:{port}", proc=proc, env=env, log_path=log_path)


def start_service(env: dict[str, str], log_path: Path) -> Service:
    """`spawn_service`, once each of its workers is up and /api/health answers 200."""
    service = spawn_service(env, log_path)
    workers = int(env["WEB_CONCURRENCY"])
    wait_until(
        lambda: httpx.get(f"{service.url}/api/health").status_code == 200 and len(service.worker_pids()) == workers,
        60,  # generous: the 2 cores are shared with Docker builds
        "gunicorn to serve /api/health",
    )
    return service


@contextmanager
def running_service(env: dict[str, str], log_path: Path) -> Iterator[Service]:
    """`start_service`, stopped on exit with time for its workers' graceful shutdown."""
    service = start_service(env, log_path)
    try:
        yield service
    finally:
        stop_process(service.proc, timeout=40)
