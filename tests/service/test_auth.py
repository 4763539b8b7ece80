"""Auth flows against real gunicorn (2 workers), PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from service import auth
from service.db import create_pool
from service.settings import load_settings
from tests.service.api import new_user
from tests.service.stack import TEST_REDIS_URL, Service, wait_until

pytestmark = pytest.mark.integration


def test_register_login_refresh_rotation_and_logout(client: httpx.Client) -> None:
    user = new_user(client)
    assert client.get("/api/discussions", headers=user.headers).status_code == 200
    assert client.get("/api/discussions").status_code == 401
    assert client.get("/api/discussions", headers={"Authorization": "Bearer nope"}).status_code == 401

    dup = client.post("/api/auth/register", json={"email": user.email, "password": "whatever-long"})
    assert dup.status_code == 409

    first = user.refresh_token
    rotated = client.post("/api/auth/refresh", json={"refresh_token": first})
    assert rotated.status_code == 200
    second = rotated.json()["refresh_token"]
    assert second != first
    assert client.get("/api/usage", headers={"Authorization": f"Bearer {rotated.json()['access_token']}"}).is_success

    # Replaying the rotated token is theft: the whole family dies, including the newest token.
    assert client.post("/api/auth/refresh", json={"refresh_token": first}).status_code == 401
    assert client.post("/api/auth/refresh", json={"refresh_token": second}).status_code == 401

    fresh = client.post("/api/auth/login", json={"email": user.email, "password": user.password}).json()
    assert client.post("/api/auth/logout", json={"refresh_token": fresh["refresh_token"]}).status_code == 204
    assert client.post("/api/auth/refresh", json={"refresh_token": fresh["refresh_token"]}).status_code == 401


def test_wrong_password_and_account_rate_limit(client: httpx.Client) -> None:
    user = new_user(client)
    for _ in range(5):  # LOGIN_MAX_FAILURES_PER_ACCOUNT default
        bad = client.post("/api/auth/login", json={"email": user.email, "password": "wrong-password"})
        assert bad.status_code == 401
    # Now even the right password is refused until the window passes.
    locked = client.post("/api/auth/login", json={"email": user.email, "password": user.password})
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) > 0
    unknown = client.post("/api/auth/login", json={"email": "nobody@example.test", "password": "whatever1"})
    assert unknown.status_code == 401


def logged(service: Service, rid: str) -> list[dict[str, Any]]:
    """The service's log lines of request `rid`, once there is one (every line is JSON)."""

    def lines() -> list[dict[str, Any]]:
        entries = [json.loads(line) for line in service.log_path.read_text().splitlines()]
        return [entry for entry in entries if entry.get("request_id") == rid]

    wait_until(lambda: bool(lines()), 5, "the request log line")
    return lines()


def test_request_id_is_returned_and_logged_as_json(client: httpx.Client, service: Service) -> None:
    rid = f"req-{secrets.token_hex(4)}"
    echoed = client.get("/api/roles", headers={"X-Request-ID": rid})
    assert echoed.headers["X-Request-ID"] == rid
    generated = client.get("/api/health", headers={"X-Request-ID": "bad id with spaces"})
    assert generated.headers["X-Request-ID"] not in ("", "bad id with spaces")
    (entry,) = logged(service, rid)
    assert entry["route"] == "/api/roles" and entry["status"] == 200 and entry["duration_ms"] >= 0
    assert entry["client"] == "127.0.0.1"


def test_the_client_address_is_the_trusted_proxys_x_real_ip(client: httpx.Client, service: Service) -> None:
    rid = f"req-{secrets.token_hex(4)}"
    client.get("/api/roles", headers={"X-Request-ID": rid, "X-Real-IP": "203.0.113.77"})
    assert logged(service, rid)[0]["client"] == "203.0.113.77"


def test_login_rate_limit_per_ip(database_url: str, redis_prefix: str) -> None:
    """auth.login called directly with a small per-IP limit: the IP is cut off, other IPs are not."""
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL,
        "REDIS_KEY_PREFIX": f"{redis_prefix}ip-limit:",
        "AI_MODEL_BASE_URL": "http://127.0.0.1:9/v1",
        "AI_API_KEY": "unused",
        "JWT_SECRET": "s" * 32,
        "LOGIN_MAX_ATTEMPTS_PER_IP": "3",
    }
    settings = load_settings(env)

    async def scenario() -> tuple[list[str], str]:
        pool = await create_pool(database_url)
        redis = Redis.from_url(TEST_REDIS_URL)
        email = f"ip{secrets.token_hex(4)}@example.test"
        await auth.insert_user(pool, email, "right-password")
        outcomes = []
        for _ in range(4):
            try:
                await auth.login(pool, redis, settings, email, "right-password", "203.0.113.7")
                outcomes.append("ok")
            except auth.RateLimitedError:
                outcomes.append("limited")
        other = await auth.login(pool, redis, settings, email, "right-password", "198.51.100.1")
        await pool.close()
        await redis.aclose()
        return outcomes, other.access_token

    outcomes, other_ip_token = asyncio.run(scenario())
    assert outcomes == ["ok", "ok", "ok", "limited"]
    assert other_ip_token
