"""Passwords (argon2id), JWT access tokens (HS256) and opaque refresh tokens."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()  # argon2id with the library's current recommended cost
JWT_ALGORITHM = "HS256"
# Verified against for unknown emails so login timing does not reveal which accounts exist.
DUMMY_PASSWORD_HASH = _hasher.hash(secrets.token_hex(16))


class InvalidTokenError(Exception):
    """An access token is missing, expired, forged or malformed."""


async def hash_password(password: str) -> str:
    # argon2 burns ~50 ms of CPU on purpose: keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


def create_access_token(user_id: uuid.UUID, secret: str, ttl_seconds: int) -> str:
    now = int(time.time())
    claims = {"sub": str(user_id), "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def decode_access_token(token: str, secret: str) -> uuid.UUID:
    """Return the user id of a valid token; raise InvalidTokenError otherwise."""
    try:
        claims = jwt.decode(token, secret, algorithms=[JWT_ALGORITHM], options={"require": ["exp", "iat", "sub"]})
        return uuid.UUID(claims["sub"])
    except (jwt.PyJWTError, ValueError) as exc:
        raise InvalidTokenError(str(exc)) from None


def new_token() -> str:
    """An opaque secret handed out once: a refresh token or an invitation code."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    """How a `new_token()` is stored: tokens are 256 random bits, so a fast unsalted hash is enough to make a
    DB leak useless."""
    return hashlib.sha256(token.encode()).digest()
