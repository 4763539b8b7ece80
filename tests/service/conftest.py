"""Shared fixtures: a fresh database, a Redis key prefix, the fake LLM and gunicorn, all on loopback."""

from __future__ import annotations

import asyncio
import json
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
import pytest
import redis
from websockets.sync.client import connect
from websockets.typing import Origin

from service.migrate import apply_migrations

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


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, migrated database for this test session, dropped at the end."""
    with scratch_database() as url:
        asyncio.run(apply_migrations(url))
        yield url


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


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A key prefix of this session; its keys are deleted at the end."""
    with scratch_redis_prefix() as prefix:
        yield prefix


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


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLlm]:
    with running_fake_llm() as llm:
        yield llm


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


def start_service(env: dict[str, str], log_path: Path) -> Service:
    """gunicorn on a free loopback port; its stderr (JSON log lines) goes to `log_path`."""
    port = free_port()
    env = {**env, "BIND": f"127.0.0.1:{port}"}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", "gunicorn", "-c", str(REPO / "service" / "gunicorn_conf.py")],
            cwd=REPO,
            env=env,
            stderr=log,
        )
    service = Service(url=f"http://127.0.0.1:{port}", proc=proc, env=env, log_path=log_path)
    workers = int(env["WEB_CONCURRENCY"])
    wait_until(
        lambda: httpx.get(f"{service.url}/api/health").status_code == 200 and len(service.worker_pids()) == workers,
        60,  # generous: the 2 cores are shared with Docker builds
        "gunicorn to serve /api/health",
    )
    return service


@pytest.fixture(scope="session")
def service(
    database_url: str, redis_prefix: str, fake_llm: FakeLlm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """gunicorn with 2 uvicorn workers, agent cap 3, AGENT_TIMEOUT 4 s, discussion lease 3 s."""
    tmp = tmp_path_factory.mktemp("svc")
    svc = start_service(service_env(database_url, redis_prefix, fake_llm, tmp), tmp / "service.log")
    try:
        yield svc
    finally:
        stop_process(svc.proc, timeout=40)


@dataclass
class User:
    email: str
    password: str
    headers: dict[str, str]
    refresh_token: str


def new_user(client: httpx.Client) -> User:
    email = f"u{secrets.token_hex(5)}@example.test"
    password = secrets.token_urlsafe(12)
    client.post("/api/auth/register", json={"email": email, "password": password}).raise_for_status()
    tokens = client.post("/api/auth/login", json={"email": email, "password": password}).json()
    return User(email, password, {"Authorization": f"Bearer {tokens['access_token']}"}, tokens["refresh_token"])


@pytest.fixture
def user(client: httpx.Client) -> User:
    """A fresh user of the shared service, logged in."""
    return new_user(client)


@pytest.fixture
def client(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30) as c:
        yield c


def ws_ticket(client: httpx.Client, user: User, discussion_id: str) -> str:
    response = client.post("/api/ws-ticket", json={"discussion_id": discussion_id}, headers=user.headers)
    response.raise_for_status()
    return str(response.json()["ticket"])


def ws_url(service: Service, discussion_id: str, ticket: str, after: int = 0) -> str:
    return f"ws://{service.url.removeprefix('http://')}/ws/discussions/{discussion_id}?ticket={ticket}&after={after}"


def read_events(
    service: Service,
    client: httpx.Client,
    user: User,
    discussion_id: str,
    after: int = 0,
    until: Callable[[dict[str, Any]], bool] = lambda e: e["type"] == "discussion_finished",
    timeout: float = 60,
) -> list[dict[str, Any]]:
    """Events from the WebSocket, from seq > after up to and including the first one matching `until`."""
    url = ws_url(service, discussion_id, ws_ticket(client, user, discussion_id), after)
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with connect(url, origin=Origin(ORIGIN), proxy=None) as ws:
        while True:
            event = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            events.append(event)
            if until(event):
                return events


def create_discussion(client: httpx.Client, user: User, topic: str, panel: list[str], rounds: int = 1) -> str:
    body = {"topic": topic, "panel": panel, "max_rounds": rounds}
    response = client.post("/api/discussions", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def wait_finished(client: httpx.Client, user: User, discussion_id: str, timeout: float = 60) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def finished() -> bool:
        found.update(client.get(f"/api/discussions/{discussion_id}", headers=user.headers).json())
        return found["status"] not in ("running", "stopping")

    wait_until(finished, timeout, f"discussion {discussion_id} to finish")
    return found
