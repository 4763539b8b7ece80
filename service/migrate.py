"""Apply versioned SQL migrations: `python -m service.migrate`.

Safe to run twice and concurrently: a PostgreSQL advisory lock serialises runners and
schema_migrations records which versions are in.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Arbitrary constant shared by every runner of this project's migrations.
ADVISORY_LOCK_KEY = 7_301_220_417


def migration_files() -> list[tuple[int, Path]]:
    """(version, path) for every NNNN_name.sql file, in version order."""
    found = [(int(p.name.split("_", 1)[0]), p) for p in MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")]
    return sorted(found)


async def apply_migrations(database_url: str) -> list[int]:
    """Apply pending migrations in order; return the versions applied by this call."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, path in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, path.name)
            applied.append(version)
        return applied
    finally:
        await conn.close()  # closing the session releases the advisory lock


def main() -> None:
    # A managed database may give migrations a role of their own (DDL) and the app one without.
    url = os.environ.get("MIGRATION_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        sys.exit("DATABASE_URL is not set; export DATABASE_URL=postgresql://... and rerun")
    try:
        applied = asyncio.run(apply_migrations(url))
    except asyncpg.InvalidPasswordError as exc:
        # The usual cause on a host: secrets.env was lost or regenerated after the database volume was made.
        sys.exit(
            f"migrations: the database refused the password ({exc}): POSTGRES_PASSWORD in secrets.env is not the "
            "one the database was created with; put the original secrets.env back"
        )
    print(f"applied migrations: {applied or 'none (schema up to date)'}")


if __name__ == "__main__":
    main()
