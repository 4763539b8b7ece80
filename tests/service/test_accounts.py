"""Who may sign up, the operator's `python -m service.users`, daily token limits, and deleting an account."""

from __future__ import annotations

import asyncio
import datetime
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from service.migrate import apply_migrations
from service.quota import DayUsage
from tests.service.api import User, create_discussion, new_user, read_events, wait_finished
from tests.service.stack import (
    PYTHON,
    REPO,
    TEST_REDIS_URL,
    FakeLlm,
    Service,
    running_service,
    scratch_database,
    scratch_redis_prefix,
    service_env,
)

pytestmark = pytest.mark.integration
QUOTA = 2000


@pytest.fixture(scope="module")
def limited(fake_llm: FakeLlm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One worker in invite mode with a 2,000-token daily quota, on a database of its own."""
    tmp = tmp_path_factory.mktemp("limited")
    with scratch_database("svc_limited") as url, scratch_redis_prefix("limited") as prefix:
        asyncio.run(apply_migrations(url))
        overrides = {"REGISTRATION_MODE": "invite", "DAILY_TOKEN_QUOTA": str(QUOTA), "WEB_CONCURRENCY": "1"}
        with running_service(service_env(url, prefix, fake_llm, tmp, **overrides), tmp / "service.log") as svc:
            yield svc


def users_cli(service: Service, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m service.users` with the service's environment, as `inv users.*` runs it in the API container."""
    return subprocess.run(
        [PYTHON, "-m", "service.users", *args],
        cwd=REPO,
        env=service.env,
        input=None if password is None else password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )


def operator_adds(service: Service, client: httpx.Client, *flags: str) -> User:
    email, password = f"op{secrets.token_hex(5)}@example.test", secrets.token_urlsafe(12)
    added = users_cli(service, "add", email, *flags, password=password)
    assert added.returncode == 0 and added.stdout.startswith(f"added {email}"), added.stderr
    tokens = client.post("/api/auth/login", json={"email": email, "password": password})
    assert tokens.status_code == 200, tokens.text
    return User(email, password, {"Authorization": f"Bearer {tokens.json()['access_token']}"}, "")


def sign_up(client: httpx.Client, email: str, invitation: str | None = None) -> httpx.Response:
    body = {"email": email, "password": "long-enough-pw", "invitation": invitation}
    return client.post("/api/auth/register", json=body)


def test_closed_registration_answers_403(
    database_url: str, redis_prefix: str, fake_llm: FakeLlm, tmp_path: Path
) -> None:
    env = service_env(database_url, redis_prefix, fake_llm, tmp_path, WEB_CONCURRENCY="1")
    del env["REGISTRATION_MODE"]  # the default: closed
    with running_service(env, tmp_path / "service.log") as svc, httpx.Client(base_url=svc.url, timeout=30) as client:
        refused = sign_up(client, f"c{secrets.token_hex(4)}@example.test")
        assert refused.status_code == 403 and "sign-up is closed" in refused.json()["detail"]
        operator_adds(svc, client)  # the operator still can


def test_invite_mode_accepts_a_valid_invitation_once(limited: Service) -> None:
    with httpx.Client(base_url=limited.url, timeout=30) as client:
        assert "needs an invitation" in sign_up(client, "nocode@example.test").json()["detail"]
        assert sign_up(client, "badcode@example.test", "not-a-code").status_code == 403
        invited = users_cli(limited, "invite", "--days", "2", "--note", "for a test")
        assert invited.returncode == 0, invited.stderr
        code = invited.stdout.strip()
        email = f"inv{secrets.token_hex(4)}@example.test"
        assert sign_up(client, email, code).status_code == 201
        again = sign_up(client, f"inv{secrets.token_hex(4)}@example.test", code)
        assert again.status_code == 403 and "used or expired" in again.json()["detail"]
        login = client.post("/api/auth/login", json={"email": email, "password": "long-enough-pw"})
        assert login.status_code == 200


def test_operator_adds_lists_disables_enables_and_makes_admins(limited: Service) -> None:
    with httpx.Client(base_url=limited.url, timeout=30) as client:
        user = operator_adds(limited, client)
        assert (
            users_cli(limited, "add", user.email, password="another-password")
            .stderr.strip()
            .endswith("already has an account")
        )
        no_password = users_cli(limited, "add", f"n{secrets.token_hex(3)}@example.test", password="")
        assert no_password.returncode == 1 and "standard input" in no_password.stderr
        listed = users_cli(limited, "list").stdout
        assert any(line.split()[:3] == [user.email, "user", "active"] for line in listed.splitlines())

        assert users_cli(limited, "disable", user.email).returncode == 0
        login = {"email": user.email, "password": user.password}
        refused = client.post("/api/auth/login", json=login)
        assert refused.status_code == 401 and "disabled" in refused.json()["detail"]
        start = client.post("/api/discussions", json={"topic": "still here?"}, headers=user.headers)
        assert start.status_code == 403  # its unexpired access token cannot spend tokens
        assert users_cli(limited, "enable", user.email).returncode == 0
        assert client.post("/api/auth/login", json=login).status_code == 200

        assert users_cli(limited, "admin", user.email).returncode == 0
        assert client.get("/api/account", headers=user.headers).json()["is_admin"] is True
        missing = users_cli(limited, "disable", "nobody@example.test")
        assert missing.returncode == 1 and "no account nobody@example.test" in missing.stderr


def test_quota_refuses_what_does_not_fit_and_stops_a_running_discussion(limited: Service) -> None:
    with httpx.Client(base_url=limited.url, timeout=30) as client:
        user = operator_adds(limited, client)
        usage = client.get("/api/usage", headers=user.headers).json()
        assert (usage["daily_token_quota"], usage["tokens_left_today"], usage["tokens_today"]) == (QUOTA, QUOTA, 0)
        big = {"topic": "Big", "token_budget": QUOTA + 1}
        too_big = client.post("/api/discussions", json=big, headers=user.headers)
        assert too_big.status_code == 429 and f"more than the {QUOTA} tokens left" in too_big.json()["detail"]
        assert int(too_big.headers["Retry-After"]) > 0

        # Each turn costs ~400 completion tokens plus a growing prompt: the third passes the quota, and the
        # discussion ends there instead of going on to round 2 and the moderator.
        body = {"topic": "Spend [[fake:words=400,delay=0]]", "panel": ["bull", "bear", "risk"], "max_rounds": 2}
        created = client.post("/api/discussions", json={**body, "token_budget": QUOTA}, headers=user.headers)
        assert created.status_code == 201, created.text
        discussion = created.json()["id"]
        finished = wait_finished(client, user, discussion)
        assert finished["status"] == "quota_exceeded", (
            finished["tokens_used"],
            [(m["role"], m["status"]) for m in finished["messages"]],
        )
        kept = finished["messages"]
        assert [m["status"] for m in kept] == ["completed"] * len(kept) and 1 <= len(kept) < 7
        assert "moderator" not in [m["role"] for m in kept]
        assert read_events(limited, client, user, discussion)[-1]["status"] == "quota_exceeded"

        spent = client.get("/api/usage", headers=user.headers).json()
        assert spent["tokens_today"] >= QUOTA and spent["tokens_left_today"] == 0
        again = client.post("/api/discussions", json={"topic": "More", "token_budget": 100}, headers=user.headers)
        assert again.status_code == 429 and "quota (2000) is spent" in again.json()["detail"]

        assert users_cli(limited, "admin", user.email).returncode == 0  # admins answer to the ceiling only
        admin = client.post("/api/discussions", json={"topic": "Admin [[fake:words=3]]"}, headers=user.headers)
        assert admin.status_code == 201, admin.text


def test_the_service_ceiling_refuses_everyone_and_says_so() -> None:
    now = datetime.datetime(2026, 5, 1, 23, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=8)))
    midnight = datetime.datetime(2026, 5, 2, tzinfo=now.tzinfo)
    spent = DayUsage(user_tokens=10, service_tokens=5000, user_quota=None, service_ceiling=5000, resets_at=midnight)
    refused = spent.refusal(100, now)
    assert refused is not None and "daily token ceiling (5000)" in str(refused) and refused.retry_after == 3600
    assert spent.reached and spent.left == 0
    room = DayUsage(user_tokens=100, service_tokens=4000, user_quota=500, service_ceiling=5000, resets_at=midnight)
    assert room.left == 400 and room.refusal(400, now) is None and not room.reached
    assert "more than the 400 tokens left" in str(room.refusal(401, now))


def _rows_naming(database_url: str, account: uuid.UUID) -> dict[str, int]:
    async def count() -> dict[str, int]:
        conn = await asyncpg.connect(database_url)
        try:
            tables = ("refresh_tokens", "discussions", "messages", "token_usage", "files")
            found = {t: await conn.fetchval(f"SELECT count(*) FROM {t} WHERE user_id = $1", account) for t in tables}  # noqa: S608
            return {**found, "users": await conn.fetchval("SELECT count(*) FROM users WHERE id = $1", account)}
        finally:
            await conn.close()

    return asyncio.run(count())


def test_deleting_an_account_leaves_no_row_file_or_stream(
    client: httpx.Client, service: Service, database_url: str
) -> None:
    user = new_user(client)
    account = uuid.UUID(client.get("/api/account", headers=user.headers).json()["id"])
    done = create_discussion(client, user, "Done [[fake:words=5]]", ["bull"])
    wait_finished(client, user, done)
    running = create_discussion(client, user, "Running [[fake:delay=0.3,words=60]]", ["bull", "bear"])
    upload = client.post("/api/files", files={"file": ("n.txt", b"mine", "text/plain")}, headers=user.headers)
    assert upload.status_code == 201
    assert all(_rows_naming(database_url, account).values())
    artifacts = Path(service.env["ARTIFACT_STORAGE_PATH"]) / str(account)
    assert [p.name for p in artifacts.iterdir()] == [upload.json()["id"]]

    wrong = client.request("DELETE", "/api/account", json={"password": "not-it"}, headers=user.headers)
    assert wrong.status_code == 403 and _rows_naming(database_url, account)["users"] == 1
    deleted = client.request("DELETE", "/api/account", json={"password": user.password}, headers=user.headers)
    assert deleted.status_code == 204, deleted.text

    assert set(_rows_naming(database_url, account).values()) == {0}
    assert not artifacts.exists() or list(artifacts.iterdir()) == []
    store = redis.Redis.from_url(TEST_REDIS_URL)
    prefix = service.env["REDIS_KEY_PREFIX"]
    assert [k for d in (done, running) for k in store.scan_iter(f"{prefix}discussion:{d}:*")] == []
    store.close()
    login = client.post("/api/auth/login", json={"email": user.email, "password": user.password})
    assert login.status_code == 401
