"""Account flows: register (as REGISTRATION_MODE allows), login (rate limited), refresh-token rotation, logout."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from redis.asyncio import Redis

from service import security
from service.settings import Settings

Conn = asyncpg.Connection | PoolConnectionProxy
# What an account's email and password must be, for the API and the operator's `python -m service.users add`.
EMAIL_PATTERN = r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$"
EMAIL_MAX = 254
PASSWORD_MIN = 8
PASSWORD_MAX = 256


class AuthError(Exception):
    """Credentials or refresh token rejected; the message is safe to show the client."""


class EmailTakenError(Exception):
    """Registration with an email that already has an account."""


class RegistrationRefusedError(Exception):
    """Sign-up is closed, or needs an invitation that was missing, unknown, used or expired."""


class RateLimitedError(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many login attempts; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str


async def insert_user(db: asyncpg.Pool | Conn, email: str, password: str, is_admin: bool = False) -> uuid.UUID:
    """A new account; EmailTakenError if the email has one."""
    password_hash = await security.hash_password(password)
    try:
        user_id: uuid.UUID = await db.fetchval(
            "INSERT INTO users (email, password_hash, is_admin) VALUES ($1, $2, $3) RETURNING id",
            email.lower(),
            password_hash,
            is_admin,
        )
    except asyncpg.UniqueViolationError:
        raise EmailTakenError(f"{email} already has an account; log in instead") from None
    return user_id


async def register(
    pool: asyncpg.Pool, settings: Settings, email: str, password: str, invitation: str | None
) -> uuid.UUID:
    """Public sign-up: open to anyone, by a single-use invitation, or closed (operators add users instead)."""
    mode = settings.registration_mode
    if mode == "closed":
        raise RegistrationRefusedError("sign-up is closed on this service; ask its operator for an account")
    if mode == "open":
        return await insert_user(pool, email, password)
    if not invitation:
        raise RegistrationRefusedError("sign-up needs an invitation code; ask the service's operator for one")
    async with pool.acquire() as conn, conn.transaction():
        # Consumed in the same transaction as the insert: a taken email leaves the invitation unused.
        used = await conn.fetchval(
            "UPDATE invitations SET used_at = now() WHERE code_hash = $1 AND used_at IS NULL AND expires_at > now()"
            " RETURNING true",
            security.token_hash(invitation),
        )
        if not used:
            raise RegistrationRefusedError(
                "invitation code is unknown, used or expired; ask the operator for a new one"
            )
        return await insert_user(conn, email, password)


async def _issue(conn: Conn, settings: Settings, user_id: uuid.UUID, family_id: uuid.UUID) -> TokenPair:
    refresh = security.new_token()
    await conn.execute(
        "INSERT INTO refresh_tokens (token_hash, user_id, family_id, expires_at)"
        " VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        security.token_hash(refresh),
        user_id,
        family_id,
        settings.refresh_token_ttl,
    )
    access = security.create_access_token(user_id, settings.jwt_secret, settings.access_token_ttl)
    return TokenPair(access_token=access, refresh_token=refresh)


def login_failures_key(settings: Settings, email: str) -> str:
    """The Redis counter of an account's recent failed logins."""
    return f"{settings.redis_key_prefix}login:fail:{email}"


async def _check_login_rate(redis: Redis, settings: Settings, email: str, ip: str) -> None:
    prefix = settings.redis_key_prefix
    window = settings.login_window_seconds
    ip_key = f"{prefix}login:ip:{ip}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(ip_key)
        pipe.expire(ip_key, window, nx=True)
        pipe.get(login_failures_key(settings, email))
        ip_attempts, _, failures = await pipe.execute()
    if ip_attempts > settings.login_max_attempts_per_ip or int(failures or 0) >= (
        settings.login_max_failures_per_account
    ):
        raise RateLimitedError(window)


async def _verified(
    pool: asyncpg.Pool, redis: Redis, settings: Settings, email: str, password: str, ip: str
) -> asyncpg.Record:
    """The account's row if the password is right, under the login rate limits."""
    email = email.lower()
    await _check_login_rate(redis, settings, email, ip)
    row = await pool.fetchrow("SELECT id, password_hash, disabled_at FROM users WHERE email = $1", email)
    ok = await security.verify_password(row["password_hash"] if row else security.DUMMY_PASSWORD_HASH, password)
    fail_key = login_failures_key(settings, email)
    if not (row and ok):
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incr(fail_key)
            pipe.expire(fail_key, settings.login_window_seconds, nx=True)
            await pipe.execute()
        raise AuthError("wrong email or password")
    await redis.delete(fail_key)
    return row


async def login(pool: asyncpg.Pool, redis: Redis, settings: Settings, email: str, password: str, ip: str) -> TokenPair:
    """Verify credentials and open a new refresh-token family."""
    row = await _verified(pool, redis, settings, email, password, ip)
    if row["disabled_at"] is not None:  # said only to someone who knows the password
        raise AuthError("this account is disabled; ask the service's operator")
    async with pool.acquire() as conn:
        return await _issue(conn, settings, row["id"], uuid.uuid4())


async def confirm_password(
    pool: asyncpg.Pool, redis: Redis, settings: Settings, user_id: uuid.UUID, password: str, ip: str
) -> None:
    """AuthError unless `password` is the account's (for deleting it), under the login rate limits."""
    email = await pool.fetchval("SELECT email FROM users WHERE id = $1", user_id)
    if email is None:
        raise AuthError("this account no longer exists")
    await _verified(pool, redis, settings, email, password, ip)


async def refresh(pool: asyncpg.Pool, settings: Settings, refresh_token: str) -> TokenPair:
    """Rotate a refresh token. Presenting an already rotated token revokes its whole family."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT user_id, family_id, rotated_at, revoked_at, expires_at < now() AS expired"
            " FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
            security.token_hash(refresh_token),
        )
        if row is None or row["revoked_at"] is not None or row["expired"]:
            raise AuthError("refresh token is invalid or expired; log in again")
        if row["rotated_at"] is None:
            await conn.execute(
                "UPDATE refresh_tokens SET rotated_at = now() WHERE token_hash = $1",
                security.token_hash(refresh_token),
            )
            return await _issue(conn, settings, row["user_id"], row["family_id"])
        await _revoke_family(conn, row["family_id"])
    # A rotated token came back: stolen or replayed. Raised after the commit so the revocation sticks.
    raise AuthError("refresh token was already used; all sessions of this login are revoked, log in again")


async def _revoke_family(conn: Conn, family_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL", family_id
    )


async def logout(pool: asyncpg.Pool, refresh_token: str) -> None:
    """Revoke the refresh-token family the token belongs to; unknown tokens are ignored."""
    async with pool.acquire() as conn:
        family_id = await conn.fetchval(
            "SELECT family_id FROM refresh_tokens WHERE token_hash = $1",
            security.token_hash(refresh_token),
        )
        if family_id is not None:
            await _revoke_family(conn, family_id)
