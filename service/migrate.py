"""Apply versioned SQL migrations: `python -m service.migrate`.

Safe to run twice and concurrently: a PostgreSQL advisory lock serialises runners and
schema_migrations records which versions are in.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from pathlib import Path

import asyncpg

from service.data_targets import database_target

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Arbitrary constant shared by every runner of this project's migrations.
ADVISORY_LOCK_KEY = 7_301_220_417
# OpenSSL's verify codes for a certificate that is signed right but names another host or address.
NAME_MISMATCH_CODES = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


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


def password_fix(url: str, migration_role: bool) -> str:
    """What to do when the database refuses `url`'s password: the secret in secrets.env that holds it is the
    migration role's (MIGRATION_DATABASE_URL), a managed database's app role's, or the stack's own postgres's, whose
    URL alone names no sslmode (compose/api.env.j2; the config refuses a managed database without one)."""
    if migration_role:
        return "set DATABASE_MIGRATION_PASSWORD in secrets.env to database.migration_user's password"
    if database_target(url).tls != "prefer":
        return "set DATABASE_PASSWORD in secrets.env to database.user's password"
    # The usual cause on a host: secrets.env was lost or regenerated after the database volume was made.
    return "POSTGRES_PASSWORD in secrets.env is not the one the database was created with; put the original back"


def connection_failure(exc: BaseException, url: str, migration_role: bool) -> str | None:
    """The one line an operator reads when migrations cannot get into the database at `url`: what failed, where,
    and what to set; None for any other failure (a migration's own error, whose traceback says more)."""
    target = database_target(url)
    where = f"{target.address} (tls {target.tls})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in NAME_MISMATCH_CODES:
            return (
                f"the database's certificate does not name the address connected to, {where}: "
                f"{exc.verify_message.rstrip('.')}: set database.host to the address its certificate is issued for"
            )
        return (
            f"the database's certificate did not verify against database.ca_file, {where}: "
            f"{exc.verify_message}: set ca_file to the CA that signed it (the instance's SSL page in the console)"
        )
    # asyncpg's word for a server that answered the TLS request with "no": a plain ConnectionError, no subclass.
    if type(exc) is ConnectionError and "rejected SSL upgrade" in str(exc):
        return (
            f"the database speaks no TLS, {where}: it refused the SSL upgrade: turn SSL on for the "
            "instance (its console's SSL page); plaintext is never tried"
        )
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return f"the database refused the password, {where}: {exc}: {password_fix(url, migration_role)}"
    return None


def main() -> None:
    # A managed database may give migrations a role of their own (DDL) and the app one without.
    migration_url = os.environ.get("MIGRATION_DATABASE_URL")
    url = migration_url or os.environ.get("DATABASE_URL")
    if not url:
        sys.exit("DATABASE_URL is not set; export DATABASE_URL=postgresql://... and rerun")
    try:
        applied = asyncio.run(apply_migrations(url))
    except Exception as exc:
        line = connection_failure(exc, url, migration_role=bool(migration_url))
        if line is None:
            raise
        sys.exit(line)
    print(f"applied migrations: {applied or 'none (schema up to date)'}")


if __name__ == "__main__":
    main()
