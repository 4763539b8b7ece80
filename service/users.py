"""User accounts as their operator and their owners manage them: add, list, disable, enable, make admin, invite,
delete (an account and everything it holds: discussions, their event streams, files, usage).

`python -m service.users COMMAND ...` runs these with the API's environment, in its container (that is what
`inv users.*` does over SSH). A password is the first line of standard input, never an argument, so it is
in no process list, shell history or log. Exit status 1 and one line on stderr when something is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
from redis.asyncio import Redis

from service import auth, discussions, quota, security
from service.agents.orchestration import stop_channel
from service.db import create_pool
from service.settings import Settings, SettingsError, load_settings
from service.storage import ArtifactStore, StorageError, blobs_for
from service.streaming import EventLog

INVITATION_DAYS = 7


class UserError(Exception):
    """A command refused: no such account, bad input, discussions still stopping; the message says what to do."""


@dataclass
class Backends:
    """What deleting an account reaches: the database, Redis (stop signals, event streams) and the file store."""

    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    events: EventLog
    store: ArtifactStore


async def user_id(pool: asyncpg.Pool, email: str) -> uuid.UUID:
    found: uuid.UUID | None = await pool.fetchval("SELECT id FROM users WHERE email = $1", email.lower())
    if found is None:
        raise UserError(f"no account {email.lower()}; see `inv users.list`")
    return found


async def add(pool: asyncpg.Pool, email: str, password: str, admin: bool = False) -> uuid.UUID:
    if not re.match(auth.EMAIL_PATTERN, email) or len(email) > auth.EMAIL_MAX:
        raise UserError(f"{email!r} is not an email address")
    if not auth.PASSWORD_MIN <= len(password) <= auth.PASSWORD_MAX:
        raise UserError(f"the password must be {auth.PASSWORD_MIN} to {auth.PASSWORD_MAX} characters")
    try:
        return await auth.insert_user(pool, email, password, admin)
    except auth.EmailTakenError:
        raise UserError(f"{email.lower()} already has an account") from None


async def list_users(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Every account, oldest first, with its discussions and today's tokens."""
    rows = await pool.fetch(
        "SELECT u.email, u.is_admin, u.disabled_at, u.created_at,"  # noqa: S608 - constant text
        " (SELECT count(*) FROM discussions d WHERE d.user_id = u.id) AS discussions,"
        f" (SELECT {quota.TOKENS_SPENT} FROM token_usage t WHERE t.user_id = u.id AND t.created_at >= $1)"
        " AS tokens_today FROM users u ORDER BY u.created_at, u.email",
        quota.day_start(quota.local_now()),
    )
    return [dict(r) for r in rows]


def users_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'EMAIL':40} {'ROLE':6} {'STATE':9} {'CREATED':10} {'DISCUSSIONS':>11} {'TOKENS TODAY':>12}"]
    for r in rows:
        state = "disabled" if r["disabled_at"] else "active"
        role = "admin" if r["is_admin"] else "user"
        created = r["created_at"].date().isoformat()
        lines.append(f"{r['email']:40} {role:6} {state:9} {created:10} {r['discussions']:>11} {r['tokens_today']:>12}")
    return "\n".join(lines)


async def make_admin(pool: asyncpg.Pool, email: str) -> None:
    await pool.execute("UPDATE users SET is_admin = true WHERE id = $1", await user_id(pool, email))


async def enable(pool: asyncpg.Pool, email: str) -> None:
    await pool.execute("UPDATE users SET disabled_at = NULL WHERE id = $1", await user_id(pool, email))


async def disable(pool: asyncpg.Pool, redis: Redis, settings: Settings, account: uuid.UUID) -> list[uuid.UUID]:
    """No more logins, refreshes or discussions; its running discussions are told to stop (their ids).
    An access token already issued lives on until it expires (ACCESS_TOKEN_TTL)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE users SET disabled_at = coalesce(disabled_at, now()) WHERE id = $1", account)
        await conn.execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", account
        )
    stopping = await discussions.stop_all_for_user(pool, account)
    for discussion_id in stopping:
        await redis.publish(stop_channel(settings.redis_key_prefix), str(discussion_id))
    return stopping


async def invite(pool: asyncpg.Pool, days: int = INVITATION_DAYS, note: str = "") -> str:
    """A single-use sign-up code for REGISTRATION_MODE=invite, valid `days`; only its hash is stored."""
    if not 1 <= days <= 365:
        raise UserError(f"--days {days}: an invitation lasts 1 to 365 days")
    code = security.new_token()
    await pool.execute(
        "INSERT INTO invitations (code_hash, expires_at, note) VALUES ($1, now() + make_interval(days => $2), $3)",
        security.token_hash(code),
        days,
        note[:200],
    )
    return code


async def delete_account(backends: Backends, account: uuid.UUID) -> None:
    """Delete the account and everything it holds. Disabled first, so nothing new appears meanwhile; its running
    discussions are stopped and waited for. Safe to run again if a step failed (e.g. the file storage)."""
    pool, settings = backends.pool, backends.settings
    email = await pool.fetchval("SELECT email FROM users WHERE id = $1", account)
    if email is None:
        return
    await disable(pool, backends.redis, settings, account)
    # A stopped turn ends at once; one whose worker died is resumed (and stopped) after its lease expires.
    deadline = asyncio.get_running_loop().time() + 2 * settings.discussion_lease_seconds + 10
    while await discussions.active_count_for_user(pool, account):
        if asyncio.get_running_loop().time() > deadline:
            raise UserError(f"{email}: its discussions are still stopping; try again in a minute")
        await asyncio.sleep(0.2)
    for file in await backends.store.list(account):
        await backends.store.delete(account, file["id"])
    for discussion_id in await discussions.ids_for_user(pool, account):
        await backends.events.delete(discussion_id)
    await backends.redis.delete(auth.login_failures_key(settings, email))
    # Cascades to discussions, messages, token usage, refresh tokens and file rows.
    await pool.execute("DELETE FROM users WHERE id = $1", account)


def _read_password() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UserError("no password on standard input; pipe it in (it is never taken as an argument)")
    return password


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service.users", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_cmd = commands.add_parser("add", help="add an account; its password is the first line of stdin")
    add_cmd.add_argument("email")
    add_cmd.add_argument("--admin", action="store_true", help="not bound by DAILY_TOKEN_QUOTA (the ceiling holds)")
    commands.add_parser("list", help="every account, with its discussions and today's tokens")
    for name, what in (
        ("disable", "no more logins; running discussions stop"),
        ("enable", "undo disable"),
        ("admin", "make the account an admin"),
        ("delete", "delete the account and all its data"),
    ):
        commands.add_parser(name, help=what).add_argument("email")
    invite_cmd = commands.add_parser("invite", help="print a single-use sign-up code (REGISTRATION_MODE=invite)")
    invite_cmd.add_argument("--days", type=int, default=INVITATION_DAYS)
    invite_cmd.add_argument("--note", default="", help="who it is for, kept with the invitation")
    return parser


async def _run(args: argparse.Namespace, settings: Settings) -> str:
    pool = await create_pool(settings.database_url)
    redis = Redis.from_url(settings.redis_url)
    try:
        if args.command == "add":
            new_id = await add(pool, args.email, _read_password(), args.admin)
            return f"added {args.email.lower()} ({'admin' if args.admin else 'user'}, id {new_id})"
        if args.command == "list":
            return users_table(await list_users(pool))
        if args.command == "invite":
            return await invite(pool, args.days, args.note)
        if args.command == "admin":
            await make_admin(pool, args.email)
            return f"{args.email.lower()} is an admin"
        if args.command == "enable":
            await enable(pool, args.email)
            return f"{args.email.lower()} is enabled"
        account = await user_id(pool, args.email)
        if args.command == "disable":
            stopped = await disable(pool, redis, settings, account)
            return f"{args.email.lower()} is disabled; {len(stopped)} running discussion(s) told to stop"
        store = ArtifactStore(pool, blobs_for(settings), settings.artifact_storage_path / ".spool", 0)
        events = EventLog(redis, settings.redis_key_prefix)
        await delete_account(Backends(settings, pool, redis, events, store), account)
        return f"deleted {args.email.lower()} and all its data"
    finally:
        await pool.close()
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        print(asyncio.run(_run(args, load_settings())))
    except (UserError, SettingsError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
