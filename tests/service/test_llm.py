"""The real openai SDK, through service.llm, against the fake LLM server over HTTP."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from service.llm import LlmClient, LlmError, LlmTimeoutError, Usage
from service.settings import load_settings
from tests.service.conftest import REJECTED_KEY, FakeLlm

pytestmark = pytest.mark.integration


def client_for(fake_llm: FakeLlm, keys: str = "sk-a", agent_timeout: str = "3") -> LlmClient:
    env = {
        "DATABASE_URL": "postgresql://unused/x",
        "REDIS_URL": "redis://unused",
        "AI_MODEL_BASE_URL": fake_llm.base_url,
        "AI_API_KEY": keys,
        "JWT_SECRET": "j" * 32,
        "AGENT_TIMEOUT": agent_timeout,
    }
    return LlmClient(load_settings(env))


def run_turn(llm: LlmClient, text: str, json_mode: bool = False) -> tuple[str, str, Usage]:
    content: list[str] = []
    reasoning: list[str] = []

    async def on_delta(c: str, r: str) -> None:
        content.append(c)
        reasoning.append(r)

    async def go() -> Usage:
        try:
            return await llm.stream_turn(
                [{"role": "system", "content": "shared prefix"}, {"role": "user", "content": text}],
                on_delta,
                json_mode=json_mode,
            )
        finally:
            await llm.close()

    try:
        usage = asyncio.run(go())
    except LlmError as exc:
        exc.partial = "".join(content)  # type: ignore[attr-defined]
        raise
    return "".join(content), "".join(reasoning), usage


def test_streams_deterministic_text_usage_cache_and_reasoning(fake_llm: FakeLlm) -> None:
    text, reasoning, usage = run_turn(client_for(fake_llm), "hello [[fake:words=7,reasoning=3]]")
    again, _, usage2 = run_turn(client_for(fake_llm), "hello [[fake:words=7,reasoning=3]]")
    assert text == again and len(text.split()) == 7
    assert len(reasoning.split()) == 3
    assert usage.prompt_tokens > 0 and usage.completion_tokens == 8
    # The second identical request hits the prefix cache for the whole prompt.
    assert usage2.cache_hit_tokens == usage2.prompt_tokens and usage2.cache_miss_tokens == 0


def test_json_mode_answers_an_object(fake_llm: FakeLlm) -> None:
    text, _, _ = run_turn(client_for(fake_llm), "verdict please", json_mode=True)
    assert text.startswith("{") and '"stance"' in text


def test_rotates_to_next_key_on_401_and_retries_429_and_500_before_first_token(fake_llm: FakeLlm) -> None:
    fake_llm.reset()
    fake_llm.queue_faults({"status": 429}, {"status": 500})  # consumed by the requests after the 401
    text, _, _ = run_turn(client_for(fake_llm, keys=f"{REJECTED_KEY},sk-b,sk-c"), "rotate")
    assert text
    keys = fake_llm.stats()["keys_seen"]
    # 401 moves to the next key, so does 429; a 500 retries the same key.
    assert keys == [REJECTED_KEY, "sk-b", "sk-c", "sk-c"]


def test_cut_stream_after_first_token_is_an_error_not_a_retry(fake_llm: FakeLlm) -> None:
    fake_llm.reset()
    with pytest.raises(LlmError, match="before finish_reason") as caught:
        run_turn(client_for(fake_llm), "cut [[fake:cut=1,words=10]]")
    assert caught.value.partial  # type: ignore[attr-defined]
    assert fake_llm.stats()["requests"] == 1


def test_keepalives_cannot_defeat_the_whole_turn_timeout(fake_llm: FakeLlm) -> None:
    started = time.monotonic()
    with pytest.raises(LlmTimeoutError, match="AGENT_TIMEOUT=2"):
        run_turn(client_for(fake_llm, agent_timeout="2"), "stall [[fake:stall_mid=30,words=10]]")
    assert time.monotonic() - started < 4


def test_fake_llm_injects_http_errors_by_marker(fake_llm: FakeLlm) -> None:
    response = httpx.post(
        f"{fake_llm.base_url}/chat/completions",
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "[[fake:status=503]]"}]},
    )
    assert response.status_code == 503
