"""The real openai SDK, through service.llm, against the fake LLM server over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from redis.asyncio import Redis

from service.llm import Failure, KeyHealth, LlmClient, LlmError, LlmTimeoutError, Usage
from service.settings import Settings, load_settings
from tests.service.stack import REJECTED_KEY, TEST_REDIS_URL, FakeLlm, scratch_redis_prefix

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> Iterator[str]:
    """The pool health of one test: each test starts with every key usable."""
    with scratch_redis_prefix("llm") as name:
        yield name


def settings_for(fake_llm: FakeLlm, prefix: str, keys: str = "sk-a", agent_timeout: str = "3") -> Settings:
    env = {
        "DATABASE_URL": "postgresql://unused/x",
        "REDIS_URL": TEST_REDIS_URL,
        "REDIS_KEY_PREFIX": prefix,
        "AI_MODEL_BASE_URL": fake_llm.base_url,
        "AI_API_KEY": keys,
        "JWT_SECRET": "j" * 32,
        "AGENT_TIMEOUT": agent_timeout,
    }
    return load_settings(env)


def run_turn(settings: Settings, text: str, json_mode: bool = False) -> tuple[str, str, Usage]:
    """One turn through a fresh LlmClient, as a worker that just started would run it."""
    content: list[str] = []
    reasoning: list[str] = []

    async def on_delta(c: str, r: str) -> None:
        content.append(c)
        reasoning.append(r)

    async def go() -> Usage:
        redis = Redis.from_url(settings.redis_url)
        llm = LlmClient(settings, redis)
        try:
            return await llm.stream_turn(
                [{"role": "system", "content": "shared prefix"}, {"role": "user", "content": text}],
                on_delta,
                json_mode=json_mode,
            )
        finally:
            await llm.close()
            await redis.aclose()

    try:
        usage = asyncio.run(go())
    except LlmError as exc:
        exc.partial = "".join(content)  # type: ignore[attr-defined]
        raise
    return "".join(content), "".join(reasoning), usage


def test_streams_deterministic_text_usage_cache_and_reasoning(fake_llm: FakeLlm, prefix: str) -> None:
    text, reasoning, usage = run_turn(settings_for(fake_llm, prefix), "hello [[fake:words=7,reasoning=3]]")
    again, _, usage2 = run_turn(settings_for(fake_llm, prefix), "hello [[fake:words=7,reasoning=3]]")
    assert text == again and len(text.split()) == 7
    assert len(reasoning.split()) == 3
    assert usage.prompt_tokens > 0 and usage.completion_tokens == 8
    # The second identical request hits the prefix cache for the whole prompt.
    assert usage2.cache_hit_tokens == usage2.prompt_tokens and usage2.cache_miss_tokens == 0


def test_json_mode_answers_an_object(fake_llm: FakeLlm, prefix: str) -> None:
    text, _, _ = run_turn(settings_for(fake_llm, prefix), "verdict please", json_mode=True)
    assert text.startswith("{") and '"stance"' in text


def test_rotates_to_next_key_on_401_and_429_and_retries_500_before_first_token(fake_llm: FakeLlm, prefix: str) -> None:
    fake_llm.reset()
    fake_llm.queue_faults({"status": 429}, {"status": 500})  # consumed by the requests after the 401
    text, _, _ = run_turn(settings_for(fake_llm, prefix, keys=f"{REJECTED_KEY},sk-b,sk-c"), "rotate")
    assert text
    keys = fake_llm.stats()["keys_seen"]
    # 401 moves to the next key, so does 429; a 500 retries the same key.
    assert keys == [REJECTED_KEY, "sk-b", "sk-c", "sk-c"]


def test_cut_stream_after_first_token_is_an_error_not_a_retry(fake_llm: FakeLlm, prefix: str) -> None:
    fake_llm.reset()
    with pytest.raises(LlmError, match="before finish_reason") as caught:
        run_turn(settings_for(fake_llm, prefix), "cut [[fake:cut=1,words=10]]")
    assert caught.value.partial  # type: ignore[attr-defined]
    assert caught.value.category == "cut"
    assert fake_llm.stats()["requests"] == 1


def test_keepalives_cannot_defeat_the_whole_turn_timeout(fake_llm: FakeLlm, prefix: str) -> None:
    started = time.monotonic()
    with pytest.raises(LlmTimeoutError, match="AGENT_TIMEOUT=2"):
        run_turn(settings_for(fake_llm, prefix, agent_timeout="2"), "stall [[fake:stall_mid=30,words=10]]")
    assert time.monotonic() - started < 4


def test_fake_llm_injects_http_errors_by_marker(fake_llm: FakeLlm) -> None:
    response = httpx.post(
        f"{fake_llm.base_url}/chat/completions",
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "[[fake:status=503]]"}]},
    )
    assert response.status_code == 503


def set_keys(fake_llm: FakeLlm, **sets: list[str]) -> None:
    """Which keys the fake refuses, at run time: reject=[...] (401), empty_balance=[...] (402)."""
    httpx.post(f"{fake_llm.admin_url}/keys", json=sets).raise_for_status()


@pytest.fixture
def empty_balance(fake_llm: FakeLlm) -> Iterator[None]:
    """`sk-empty-one1` has no balance; afterwards no key has."""
    set_keys(fake_llm, empty_balance=["sk-empty-one1"])
    yield
    set_keys(fake_llm, empty_balance=[])


def test_402_moves_to_the_next_key_and_every_worker_then_skips_the_empty_one(
    fake_llm: FakeLlm, prefix: str, empty_balance: None
) -> None:
    fake_llm.reset()
    settings = settings_for(fake_llm, prefix, keys="sk-empty-one1,sk-good-two2")
    assert run_turn(settings, "first")[0]
    assert run_turn(settings, "second, from a worker that never saw the 402")[0]
    assert fake_llm.stats()["keys_seen"] == ["sk-empty-one1", "sk-good-two2", "sk-good-two2"]
    # Health is stored under a hash of the key, never the key itself.
    stored = [key.decode() for key in redis.Redis.from_url(TEST_REDIS_URL).scan_iter(f"{prefix}*")]
    assert len(stored) == 1 and "one1" not in stored[0] and stored[0].startswith(f"{prefix}llm-key:")


def test_every_key_out_of_balance_says_so_with_a_warning_line_per_attempt(
    fake_llm: FakeLlm, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    set_keys(fake_llm, empty_balance=["sk-empty-one1", "sk-empty-two2"])
    try:
        with pytest.raises(LlmError) as caught:
            run_turn(settings_for(fake_llm, prefix, keys="sk-empty-one1,sk-empty-two2"), "no money")
    finally:
        set_keys(fake_llm, empty_balance=[])
    assert caught.value.category == "balance"
    assert str(caught.value) == (
        "every API key of the pool has insufficient balance (upstream 402: Insufficient Balance); "
        "top up the upstream account"
    )
    warnings = [r.getMessage() for r in caplog.records if r.name == "service.llm" and r.levelname == "WARNING"]
    assert warnings == [
        "upstream LLM failed: category=balance key=…one1 status=402 model=deepseek-chat: Insufficient Balance",
        "upstream LLM failed: category=balance key=…two2 status=402 model=deepseek-chat: Insufficient Balance",
    ]


def test_a_rate_limited_good_key_is_waited_for_never_swapped_for_the_revoked_one(
    fake_llm: FakeLlm, prefix: str
) -> None:
    fake_llm.reset()
    fake_llm.queue_faults({"status": 429, "retry_after": "1"})  # the revoked key's 401s take no fault
    settings = settings_for(fake_llm, prefix, keys=f"{REJECTED_KEY},sk-good-two2", agent_timeout="4")
    started = time.monotonic()
    assert run_turn(settings, "busy")[0]
    assert time.monotonic() - started >= 1  # Retry-After was honoured
    assert fake_llm.stats()["keys_seen"] == [REJECTED_KEY, "sk-good-two2", "sk-good-two2"]


def test_a_rate_limit_that_outlasts_the_turn_is_reported_as_the_rate_limit(fake_llm: FakeLlm, prefix: str) -> None:
    fake_llm.reset()
    fake_llm.queue_faults(*[{"status": 429, "retry_after": "1"}] * 10)
    settings = settings_for(fake_llm, prefix, keys=f"{REJECTED_KEY},sk-good-two2", agent_timeout="3")
    try:
        with pytest.raises(LlmError) as caught:
            run_turn(settings, "busy for long")
        seen = fake_llm.stats()["keys_seen"]
    finally:
        fake_llm.reset()  # the 429s left unused
    assert caught.value.category == "rate_limit" and "rate limit" in str(caught.value)
    assert "401" not in str(caught.value) and "refused" not in str(caught.value)
    assert seen.count(REJECTED_KEY) == 1 and len(seen) >= 3  # the good key was retried, the revoked never again


@pytest.mark.parametrize(("marker", "category"), [("stream_error=3", "stream_error"), ("malformed=3", "malformed")])
def test_an_error_inside_the_stream_is_a_failed_turn_keeping_its_partial_text(
    fake_llm: FakeLlm, prefix: str, marker: str, category: str
) -> None:
    fake_llm.reset()
    with pytest.raises(LlmError) as caught:
        run_turn(settings_for(fake_llm, prefix), f"[[fake:{marker},words=10]]")
    assert caught.value.category == category
    assert len(caught.value.partial.split()) == 3  # type: ignore[attr-defined]
    assert fake_llm.stats()["requests"] == 1  # tokens were streamed: no retry that would repeat them


def test_the_callers_own_error_is_not_taken_for_an_upstream_failure(fake_llm: FakeLlm, prefix: str) -> None:
    async def go() -> None:
        redis = Redis.from_url(TEST_REDIS_URL)
        llm = LlmClient(settings_for(fake_llm, prefix), redis)

        async def refuse(content: str, reasoning: str) -> None:
            raise KeyError("the event log is gone")

        try:
            await llm.stream_turn([{"role": "user", "content": "hi"}], refuse)
        finally:
            await llm.close()
            await redis.aclose()

    with pytest.raises(KeyError, match="event log"):
        asyncio.run(go())


def test_a_short_rest_never_cuts_a_longer_one_short(prefix: str) -> None:
    """Worker A marks a key revoked for an hour; worker B's 429 on the same key a moment later leaves it so."""

    async def go() -> list[tuple[Failure, float] | None]:
        redis = Redis.from_url(TEST_REDIS_URL)
        health = KeyHealth(redis, prefix)
        try:
            await health.cool("sk-both-a1b2", Failure("auth", 401, "Authentication Fails"), 3600)
            await health.cool("sk-both-a1b2", Failure("rate_limit", 429, "Rate Limit Reached"), 1)
            await health.cool("sk-other-c3d4", Failure("rate_limit", 429, "Rate Limit Reached"), 1)
            return await health.cooling(["sk-both-a1b2", "sk-other-c3d4", "sk-fresh-e5f6"])
        finally:
            await redis.aclose()

    both, other, fresh = asyncio.run(go())
    assert both is not None and both[0].category == "auth" and both[1] > 3590
    assert other is not None and other[0].category == "rate_limit" and other[1] <= 1
    assert fresh is None
