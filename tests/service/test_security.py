from __future__ import annotations

import asyncio
import time
import uuid

import jwt
import pytest

from service import security

pytestmark = pytest.mark.unit
SECRET = "k" * 64


def test_password_hash_is_argon2id_and_verifies() -> None:
    hashed = asyncio.run(security.hash_password("correct horse"))
    assert hashed.startswith("$argon2id$")
    assert asyncio.run(security.verify_password(hashed, "correct horse"))
    assert not asyncio.run(security.verify_password(hashed, "wrong horse"))
    assert not asyncio.run(security.verify_password("not-a-hash", "x"))


def test_access_token_round_trip() -> None:
    user = uuid.uuid4()
    assert security.decode_access_token(security.create_access_token(user, SECRET, 60), SECRET) == user


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode({"sub": str(uuid.uuid4()), "iat": 0, "exp": 1}, SECRET, algorithm="HS256"),  # expired
        jwt.encode({"sub": str(uuid.uuid4()), "iat": int(time.time())}, SECRET, algorithm="HS256"),  # no exp
        jwt.encode({"sub": str(uuid.uuid4()), "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),  # no iat
        jwt.encode({"sub": str(uuid.uuid4()), "iat": 0, "exp": 2**40}, "other" * 10, algorithm="HS256"),  # forged
        jwt.encode({"sub": str(uuid.uuid4()), "iat": 0, "exp": 2**40}, SECRET, algorithm="HS512"),  # alg swap
        jwt.encode({"sub": str(uuid.uuid4()), "iat": 0, "exp": 2**40}, "", algorithm="none"),  # unsigned
    ],
    # Fixed names: the tokens differ per process, and xdist's workers must collect the same test ids.
    ids=["expired", "no-exp", "no-iat", "forged", "alg-swap", "unsigned"],
)
def test_rejected_access_tokens(token: str) -> None:
    with pytest.raises(security.InvalidTokenError):
        security.decode_access_token(token, SECRET)


def test_refresh_tokens_are_random_and_stored_hashed() -> None:
    a, b = security.new_token(), security.new_token()
    assert a != b and len(a) >= 40
    assert security.token_hash(a) != a.encode() and len(security.token_hash(a)) == 32
