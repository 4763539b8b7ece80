"""Migrations: applied once, recorded, safe to run twice and concurrently."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator

import asyncpg
import pytest

from service.migrate import apply_migrations, migration_files
from tests.service.stack import PYTHON, REPO, scratch_database

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_database() -> Iterator[str]:
    with scratch_database("svc_migrate") as url:
        yield url


def test_concurrent_runs_apply_each_migration_once(empty_database: str) -> None:
    async def race() -> list[list[int]]:
        return await asyncio.gather(*(apply_migrations(empty_database) for _ in range(4)))

    results = asyncio.run(race())
    versions = [v for v, _ in migration_files()]
    assert sorted(v for applied in results for v in applied) == versions  # each applied by exactly one runner

    async def recorded() -> list[int]:
        conn = await asyncpg.connect(empty_database)
        try:
            return [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
        finally:
            await conn.close()

    assert asyncio.run(recorded()) == versions


def test_cli_runs_twice(empty_database: str) -> None:
    env = {**os.environ, "DATABASE_URL": empty_database}
    first = subprocess.run([PYTHON, "-m", "service.migrate"], cwd=REPO, env=env, capture_output=True, text=True)
    second = subprocess.run([PYTHON, "-m", "service.migrate"], cwd=REPO, env=env, capture_output=True, text=True)
    assert first.returncode == 0 and f"applied migrations: {[v for v, _ in migration_files()]}" in first.stdout
    assert second.returncode == 0 and "up to date" in second.stdout


def test_cli_without_database_url_says_what_to_set() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run([PYTHON, "-m", "service.migrate"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip().startswith("DATABASE_URL is not set")


def test_cli_with_a_refused_password_says_which_secret_differs(empty_database: str) -> None:
    """A lost or regenerated secrets.env against an existing database volume: one line naming the secret."""
    user, rest = empty_database.split("://", 1)[1].split("@", 1)
    wrong = f"postgresql://{user.split(':')[0]}:not-the-password@{rest}"
    env = {**os.environ, "DATABASE_URL": wrong}
    result = subprocess.run([PYTHON, "-m", "service.migrate"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("the database refused the password")
    assert "POSTGRES_PASSWORD in secrets.env" in result.stderr
