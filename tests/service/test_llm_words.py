"""What a user reads when the key pool cannot serve a turn: the real cause, a rate limit before a revoked key."""

from __future__ import annotations

import pytest

from service.llm import Failure, category_of_status, pool_exhausted

pytestmark = pytest.mark.unit

REVOKED = Failure("auth", 401, "Authentication Fails, Your api key: ****oked is invalid")
EMPTY = Failure("balance", 402, "Insufficient Balance")
BUSY = Failure("rate_limit", 429, "Rate Limit Reached")


def test_statuses_map_to_the_contracts_categories() -> None:
    statuses = {401: "auth", 403: "auth", 402: "balance", 429: "rate_limit", 500: "server", 503: "server"}
    assert {status: category_of_status(status) for status in statuses} == statuses
    assert category_of_status(400) == category_of_status(404) == "bad_request"


def test_a_rate_limited_key_is_the_cause_never_the_revoked_one_beside_it() -> None:
    error = pool_exhausted([REVOKED, BUSY])
    assert error.category == "rate_limit"
    assert str(error) == (
        "rate limit reached on every usable API key of the pool (upstream 429: Rate Limit Reached); "
        "try again in a minute"
    )


def test_one_cause_is_said_once_and_mixed_causes_are_each_named() -> None:
    assert str(pool_exhausted([EMPTY, EMPTY])) == (
        "every API key of the pool has insufficient balance (upstream 402: Insufficient Balance); "
        "top up the upstream account"
    )
    mixed = pool_exhausted([REVOKED, EMPTY, EMPTY])
    assert mixed.category == "balance"
    assert str(mixed) == (
        "no API key of the pool is usable: 2 with insufficient balance (upstream 402: Insufficient Balance), "
        "1 refused (upstream 401: Authentication Fails, Your api key: ****oked is invalid)"
    )
