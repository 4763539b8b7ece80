"""The service on managed data services: PostgreSQL and Redis that accept TLS only, as TencentDB does with SSL on.

The URLs are those `compose/api.env.j2` renders for a managed `database`/`redis`; the clients are the service's
own (asyncpg's pool from service/db.py, redis-py from_url), so what passes here is what the libraries verify.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import httpx
import pytest
import redis

from appliance.config import load_config
from service.data_targets import database_target
from service.db import DATABASE_ERRORS, create_pool
from service.main import create_app
from service.migrate import apply_migrations
from service.settings import load_settings
from tests.appliance.test_managed_data import DB_PASSWORD, REDIS_PASSWORD, env_of, managed_config, rendered
from tests.service.stack import REPO, TEST_DATABASE_URL, FakeLlm, running_service, service_env
from tests.service.tls_servers import PASSWORD, SERVER_NAME, TlsServers, tls_servers

pytestmark = pytest.mark.integration
APP_PASSWORD = "app-pass:/?#@word"
# What docs/production.md asks the operator to grant: the app role reads and writes rows, and nothing more.
ROLES = f"""
CREATE ROLE appliance_migrator LOGIN PASSWORD '{PASSWORD}';
CREATE ROLE appliance_app LOGIN PASSWORD '{APP_PASSWORD}';
CREATE DATABASE appliance OWNER appliance_migrator;
"""
APP_GRANTS = """
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO appliance_app;
ALTER DEFAULT PRIVILEGES FOR ROLE appliance_migrator IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO appliance_app;
ALTER DEFAULT PRIVILEGES FOR ROLE appliance_migrator IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO appliance_app;
"""


def database_url(
    servers: TlsServers, user: str = "postgres", password: str = PASSWORD, address: str = "", **options: str
) -> str:
    """As api.env names a managed database: the password URL-quoted, verify-full against the CA file."""
    query = {"sslmode": "verify-full", "sslrootcert": str(servers.ca_file), **options}
    name = "postgres" if user == "postgres" else "appliance"
    where = address or f"{SERVER_NAME}:{servers.pg_port}"
    return f"postgresql://{user}:{quote(password, safe='')}@{where}/{name}?" + urlencode(query)


def redis_url(servers: TlsServers, ca_file: Path | None = None, port: int | None = None) -> str:
    ca = ca_file or servers.ca_file
    return (
        f"rediss://:{quote(PASSWORD, safe='')}@{SERVER_NAME}:{port or servers.redis_port}/0"
        f"?ssl_cert_reqs=required&ssl_ca_certs={ca}&ssl_check_hostname=true"
    )


@pytest.fixture(scope="module")
def servers() -> Iterator[TlsServers]:
    with tls_servers() as started:
        asyncio.run(_prepare_roles(started))
        yield started


async def _prepare_roles(servers: TlsServers) -> None:
    """The two roles, the database owned by the migration role, then the app role's grants (as its owner)."""
    admin = await asyncpg.connect(database_url(servers))
    try:
        for statement in ROLES.strip().splitlines():
            await admin.execute(statement)
    finally:
        await admin.close()
    owner = await asyncpg.connect(database_url(servers, "appliance_migrator"))
    try:
        await owner.execute(APP_GRANTS)
    finally:
        await owner.close()
    await apply_migrations(database_url(servers, "appliance_migrator"))


async def _session_tls(url: str) -> bool:
    pool = await create_pool(url)
    try:
        return bool(await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    finally:
        await pool.close()


def test_the_pool_connects_with_verify_full_and_the_session_is_encrypted(servers: TlsServers) -> None:
    assert asyncio.run(_session_tls(database_url(servers, "appliance_app", APP_PASSWORD))) is True


def test_a_wrong_ca_is_refused_in_one_line(servers: TlsServers) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        asyncio.run(_session_tls(database_url(servers, sslrootcert=str(servers.wrong_ca_file))))
    assert "certificate verify failed" in str(refused.value) and "\n" not in str(refused.value)


def test_verify_full_checks_the_host_name(servers: TlsServers) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match=r"not valid for '127\.0\.0\.1'"):
        asyncio.run(_session_tls(database_url(servers, address=f"127.0.0.1:{servers.pg_port}")))


def test_plaintext_is_refused_by_both_servers(servers: TlsServers) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        asyncio.run(_session_tls(database_url(servers, sslmode="disable")))
    plain = redis.Redis(host="127.0.0.1", port=servers.redis_port, password=PASSWORD, socket_timeout=2)
    with pytest.raises(redis.ConnectionError):
        plain.ping()


def test_redis_verifies_the_certificate_with_the_url_options(servers: TlsServers) -> None:
    assert redis.Redis.from_url(redis_url(servers), socket_timeout=2).ping() is True
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(redis_url(servers, servers.wrong_ca_file), socket_timeout=2).ping()


def test_the_app_role_has_no_ddl(servers: TlsServers) -> None:
    async def check() -> None:
        app = await asyncpg.connect(database_url(servers, "appliance_app", APP_PASSWORD))
        try:
            assert await app.fetchval("SELECT count(*) FROM schema_migrations") >= 1
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute("CREATE TABLE intruder (id int)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute("DROP TABLE users")
        finally:
            await app.close()

    asyncio.run(check())


def migrate(**env: str) -> subprocess.CompletedProcess[str]:
    """`python -m service.migrate` as the deploy's one-off container runs it, with `env` (DATABASE_URL, ...)."""
    command = [sys.executable, "-m", "service.migrate"]
    return subprocess.run(command, env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_migrations_run_as_the_migration_role_when_given_one(servers: TlsServers) -> None:
    """The app role alone may not touch the schema; with MIGRATION_DATABASE_URL (the release's migration.url) the
    migration role does."""
    app = database_url(servers, "appliance_app", APP_PASSWORD)
    as_app = migrate(DATABASE_URL=app)
    assert as_app.returncode != 0 and "permission denied for schema public" in as_app.stderr
    as_migrator = migrate(DATABASE_URL=app, MIGRATION_DATABASE_URL=database_url(servers, "appliance_migrator"))
    assert as_migrator.returncode == 0, as_migrator.stderr
    assert "applied migrations: none (schema up to date)" in as_migrator.stdout


@pytest.mark.parametrize(
    ("case", "starts", "ends"),
    [
        ("wrong-ca", "the database's certificate did not verify against database.ca_file, {where}: ",
         ": set ca_file to the CA that signed it (the instance's SSL page in the console)"),
        ("another-name", "the database's certificate does not name the address connected to, {where}",
         "not valid for '127.0.0.1': set database.host to the address its certificate is issued for"),
        ("plaintext-server", "the database speaks no TLS, {where}: it refused the SSL upgrade",
         "plaintext is never tried"),
        ("app-password", "the database refused the password, {where}: password authentication failed",
         ": set DATABASE_PASSWORD in secrets.env to database.user's password"),
        ("migration-password", "the database refused the password, {where}: password authentication failed",
         ": set DATABASE_MIGRATION_PASSWORD in secrets.env to database.migration_user's password"),
    ],
)  # fmt: skip
def test_migrations_that_cannot_get_in_say_why_in_one_line(
    servers: TlsServers, case: str, starts: str, ends: str
) -> None:
    """A wrong CA, a certificate for another name, a server without TLS, a wrong password: the entry point's stderr
    is one line (what the deploy's migrations step shows), naming the cause and what to set; never a traceback."""
    app = database_url(servers, "appliance_app", APP_PASSWORD)
    env = {
        "wrong-ca": {"MIGRATION_DATABASE_URL": database_url(servers, sslrootcert=str(servers.wrong_ca_file))},
        "another-name": {"DATABASE_URL": database_url(servers, address=f"127.0.0.1:{servers.pg_port}")},
        "plaintext-server": {"DATABASE_URL": f"{TEST_DATABASE_URL}?sslmode=verify-full&sslrootcert={servers.ca_file}"},
        "app-password": {"DATABASE_URL": database_url(servers, "appliance_app", "not-the-password")},
        "migration-password": {
            "DATABASE_URL": app,
            "MIGRATION_DATABASE_URL": database_url(servers, "appliance_migrator", "not-the-password"),
        },
    }[case]
    refused = migrate(**env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    line = refused.stderr.strip()
    where = f"{database_target(env.get('MIGRATION_DATABASE_URL') or env['DATABASE_URL']).address} (tls verify-full)"
    assert "\n" not in line and line.startswith(starts.format(where=where)), line
    assert line.endswith(ends) and PASSWORD not in line and APP_PASSWORD not in line, line


def test_health_says_what_it_reached_over_verified_tls(
    servers: TlsServers, fake_llm: FakeLlm, tmp_path: Path, redis_prefix: str
) -> None:
    """The real service under gunicorn, as the app role: the health gate's 200 and what it names."""
    env = service_env(
        database_url(servers, "appliance_app", APP_PASSWORD),
        f"{redis_prefix}managed:",
        fake_llm,
        tmp_path,
        REDIS_URL=redis_url(servers),
        WEB_CONCURRENCY="1",
    )
    with running_service(env, tmp_path / "service.log") as service:
        answer = httpx.get(f"{service.url}/api/health", timeout=10)
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "ok", body
    assert {key: body["database"][key] for key in ("target", "tls", "tls_verified")} == {
        "target": f"{SERVER_NAME}:{servers.pg_port}/appliance",
        "tls": "verify-full",
        "tls_verified": True,
    }
    assert {key: body["redis"][key] for key in ("target", "tls", "tls_verified")} == {
        "target": f"{SERVER_NAME}:{servers.redis_port}/0",
        "tls": "verify-full",
        "tls_verified": True,
    }
    assert PASSWORD not in answer.text and APP_PASSWORD not in answer.text


async def _health(database: str, redis_at: str, fake_llm: FakeLlm, tmp: Path) -> tuple[int, dict[str, Any]]:
    """/api/health of the service's app with its lifespan (its pool, its Redis clients), asked over ASGI."""
    app = create_app(load_settings(service_env(database, "managed-broken:", fake_llm, tmp, REDIS_URL=redis_at)))
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test") as client,
        ):
            answer = await client.get("/api/health")
    except DATABASE_ERRORS:
        # Shutting down, the orchestrator hands its leases back in a database it cannot reach: not this test's subject.
        pass
    return answer.status_code, answer.json()


@pytest.mark.parametrize(
    ("case", "names", "says"),
    [
        ("postgres-wrong-ca", "database", "SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED]"),
        ("postgres-plaintext-server", "database", "rejected SSL upgrade"),
        ("redis-wrong-ca", "redis", "certificate verify failed"),
        ("redis-plaintext-server", "redis", "no TLS handshake"),
    ],
)
def test_health_fails_clearly_without_verified_tls(
    servers: TlsServers, fake_llm: FakeLlm, tmp_path: Path, case: str, names: str, says: str
) -> None:
    """A wrong CA or a server that speaks no TLS: 503, and one line naming the service, where it is and why."""
    good_db, good_redis = database_url(servers, "appliance_app", APP_PASSWORD), redis_url(servers)
    plaintext_db = f"{TEST_DATABASE_URL}?sslmode=verify-full&sslrootcert={servers.ca_file}"
    plaintext_redis = redis_url(servers, port=6379)  # the machine's own Redis: plaintext only
    urls = {
        "postgres-wrong-ca": (database_url(servers, sslrootcert=str(servers.wrong_ca_file)), good_redis),
        "postgres-plaintext-server": (plaintext_db, good_redis),
        "redis-wrong-ca": (good_db, redis_url(servers, servers.wrong_ca_file)),
        "redis-plaintext-server": (good_db, plaintext_redis),
    }[case]
    status, body = asyncio.run(_health(*urls, fake_llm, tmp_path))
    assert status == 503 and body["status"] == "unavailable", body
    reason = body["reason"]
    assert reason.startswith(f"{names} ") and "(tls verify-full)" in reason and says in reason, reason
    assert "\n" not in reason and PASSWORD not in reason and body[names]["tls_verified"] is False


def test_the_urls_the_appliance_renders_reach_the_servers_through_the_service_clients(
    servers: TlsServers, tmp_path: Path
) -> None:
    """api.env's URLs as rendered for a managed config (password quoted, the CA path swapped for where this
    machine keeps it): the service's own asyncpg pool and redis-py client verify and get in."""
    config = managed_config(tmp_path, f"port = {servers.pg_port}")
    text = (
        config.path.read_text()
        .replace("db.internal.example.com", SERVER_NAME)
        .replace("port = 6380", f"port = {servers.redis_port}")
    )
    config.path.write_text(text.replace("redis.internal.example.com", SERVER_NAME))
    shutil.copy(servers.ca_file, tmp_path / "tencentdb-ca.pem")
    config.secrets_path.write_text(
        config.secrets_path.read_text().replace(DB_PASSWORD, APP_PASSWORD).replace(REDIS_PASSWORD, PASSWORD)
    )
    env = env_of(rendered(load_config(config.path))["api.env"][0])
    postgres_at, redis_at = env["DATABASE_URL"], env["REDIS_URL"]
    for inside in ("/etc/appliance/data-ca/postgres-ca.pem", "/etc/appliance/data-ca/redis-ca.pem"):
        postgres_at, redis_at = (url.replace(inside, str(servers.ca_file)) for url in (postgres_at, redis_at))
    assert asyncio.run(_session_tls(postgres_at)) is True
    assert redis.Redis.from_url(redis_at, socket_timeout=2).ping() is True
