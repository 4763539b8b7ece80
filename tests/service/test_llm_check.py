"""`python -m service.llm_check`: one tiny request per key, masked verdicts, an exit status for scripts."""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest

from service.llm import Failure
from service.llm_check import usable, verdict, verdict_line
from tests.service.stack import PYTHON, REJECTED_KEY, REPO, FakeLlm


@pytest.mark.unit
@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (None, "ok"),
        (Failure("auth", 401, "Authentication Fails"), "revoked"),
        (Failure("auth", 403, "forbidden"), "revoked"),
        (Failure("balance", 402, "Insufficient Balance"), "no balance"),
        (Failure("rate_limit", 429, "Rate Limit Reached"), "rate limited"),
        (Failure("server", 503, "busy"), "unreachable"),
        (Failure("connection", None, "All connection attempts failed"), "unreachable"),
        (Failure("timeout", None, "no answer in 15 s"), "unreachable"),
        (Failure("bad_request", 404, "model not found"), "unreachable"),
    ],
)
def test_verdicts(failure: Failure | None, said: str) -> None:
    assert verdict(failure) == said
    assert usable(failure) == (said in ("ok", "rate limited"))


@pytest.mark.unit
def test_a_key_shows_its_last_four_characters_only() -> None:
    line = verdict_line("sk-0123456789abcdef", Failure("balance", 402, "Insufficient Balance"))
    assert line == "sk-…cdef no balance (upstream 402: Insufficient Balance)"
    assert verdict_line("plainkey-9z9z", None) == "…9z9z ok"


def check(fake_llm: FakeLlm, keys: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://unused/x",
        "REDIS_URL": "redis://unused",
        "JWT_SECRET": "j" * 32,
        "AI_MODEL_BASE_URL": fake_llm.base_url,
        "AI_API_KEY": keys,
    }
    return subprocess.run(
        [PYTHON, "-m", "service.llm_check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.integration
def test_each_key_is_tried_once_and_the_exit_status_says_whether_one_is_usable(fake_llm: FakeLlm) -> None:
    httpx.post(f"{fake_llm.admin_url}/keys", json={"empty_balance": ["sk-empty-one1"]}).raise_for_status()
    try:
        fake_llm.reset()
        mixed = check(fake_llm, f"{REJECTED_KEY},sk-empty-one1,sk-good-two2")
        assert sorted(fake_llm.stats()["keys_seen"]) == sorted([REJECTED_KEY, "sk-empty-one1", "sk-good-two2"])
        broke = check(fake_llm, f"{REJECTED_KEY},sk-empty-one1")
    finally:
        httpx.post(f"{fake_llm.admin_url}/keys", json={"empty_balance": []}).raise_for_status()
    assert mixed.returncode == 0, mixed.stderr
    assert mixed.stdout.splitlines() == [
        "sk-…oked revoked (upstream 401: Authentication Fails, Your api key: ****oked is invalid)",
        "sk-…one1 no balance (upstream 402: Insufficient Balance)",
        "sk-…two2 ok",
    ]
    assert broke.returncode == 1 and len(broke.stdout.splitlines()) == 2
    assert "sk-empty" not in mixed.stdout + broke.stdout + mixed.stderr + broke.stderr
