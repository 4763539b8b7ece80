"""The key pool and upstream failures through the real API: gunicorn with 2 workers, real PostgreSQL and Redis,
the fake LLM over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.service.api import User, create_discussion, new_user, wait_finished
from tests.service.stack import (
    REJECTED_KEY,
    FakeLlm,
    Service,
    running_service,
    scratch_redis_prefix,
    service_env,
)
from tests.service.test_metrics import sample, scrape

pytestmark = pytest.mark.integration
EMPTY, GOOD = "sk-pool-one1", "sk-pool-two2"


def set_keys(fake_llm: FakeLlm, **sets: list[str]) -> None:
    """Which keys the running fake refuses: reject=[...] (401), empty_balance=[...] (402)."""
    httpx.post(f"{fake_llm.admin_url}/keys", json=sets).raise_for_status()


@pytest.fixture(scope="module")
def pool_service(database_url: str, fake_llm: FakeLlm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service with the pool EMPTY,GOOD and a pool health of its own (a fresh Redis prefix)."""
    tmp = tmp_path_factory.mktemp("pool")
    with scratch_redis_prefix("pool") as prefix:
        env = service_env(database_url, prefix, fake_llm, tmp, AI_API_KEY=f"{EMPTY},{GOOD}")
        try:
            with running_service(env, tmp / "service.log") as svc:
                yield svc
        finally:
            set_keys(fake_llm, empty_balance=[])


def upstream_warnings(service: Service) -> list[str]:
    lines = [json.loads(line) for line in service.log_path.read_text().splitlines() if line.startswith("{")]
    return [e["msg"] for e in lines if e["logger"] == "service.llm" and e["level"] == "warning"]


def discuss(service: Service, topic: str, panel: list[str]) -> tuple[User, dict[str, Any]]:
    with httpx.Client(base_url=service.url, timeout=30) as client:
        user = new_user(client)
        discussion = create_discussion(client, user, topic, panel)
        return user, wait_finished(client, user, discussion)


def test_402_moves_to_the_next_key_and_later_turns_go_straight_to_it(pool_service: Service, fake_llm: FakeLlm) -> None:
    set_keys(fake_llm, empty_balance=[EMPTY])
    fake_llm.reset()
    _, first = discuss(pool_service, "Rotation [[fake:words=5]]", ["bull", "bear"])
    _, second = discuss(pool_service, "Rotation again [[fake:words=5]]", ["bull", "bear"])
    for detail in (first, second):
        assert detail["status"] == "completed"
        assert [m["status"] for m in detail["messages"]] == ["completed"] * 3
    # One 402 in the whole service: every later turn, on either worker, went straight to the good key.
    assert fake_llm.stats()["keys_seen"] == [EMPTY] + [GOOD] * 6
    assert upstream_warnings(pool_service) == [
        "upstream LLM failed: category=balance key=…one1 status=402 model=deepseek-chat: Insufficient Balance"
    ]


def test_every_key_out_of_balance_fails_the_turns_saying_insufficient_balance(
    pool_service: Service, fake_llm: FakeLlm
) -> None:
    set_keys(fake_llm, empty_balance=[EMPTY, GOOD])
    fake_llm.reset()
    before = upstream_warnings(pool_service)
    _, detail = discuss(pool_service, "No money [[fake:words=5]]", ["bull", "bear"])
    agents = [m for m in detail["messages"] if m["role"] != "moderator"]
    assert [m["status"] for m in agents] == ["failed", "failed"]
    for message in agents:
        assert "insufficient balance" in message["error"].lower(), message["error"]
    # One warning line per refused request; a key resting after its 402 is not asked again.
    seen = fake_llm.stats()["keys_seen"]
    assert sorted(seen) == sorted(set(seen)) and GOOD in seen
    assert upstream_warnings(pool_service)[len(before) :] == [
        f"upstream LLM failed: category=balance key=…{key[-4:]} status=402 model=deepseek-chat: Insufficient Balance"
        for key in seen
    ]
    balance_lines = [line for line in upstream_warnings(pool_service) if "category=balance" in line]
    assert sample(scrape(pool_service), "cvm_llm_upstream_failures_total", category="balance") == len(balance_lines)
    # Every agent failed: the discussion too, with the cause, and no moderator was called on nothing.
    assert detail["status"] == "failed" and "insufficient balance" in detail["error"].lower()
    assert len(detail["messages"]) == 2


def test_a_429_on_the_good_key_while_the_other_is_revoked_is_waited_out_or_reported_as_the_rate_limit(
    service: Service, fake_llm: FakeLlm
) -> None:
    fake_llm.reset()
    fake_llm.queue_faults({"status": 429, "retry_after": "1"})  # the revoked key's 401s take no fault
    _, waited = discuss(service, "Busy [[fake:words=5]]", ["bull"])
    assert [m["status"] for m in waited["messages"]] == ["completed", "completed"]
    seen = fake_llm.stats()["keys_seen"]
    assert REJECTED_KEY not in seen[seen.index("sk-test-good") :]  # after the 429, never back to the revoked key

    fake_llm.queue_faults(*[{"status": 429, "retry_after": "1"}] * 30)  # longer than AGENT_TIMEOUT (4 s)
    try:
        _, limited = discuss(service, "Busier [[fake:words=5]]", ["bull"])
        seen = fake_llm.stats()["keys_seen"]
    finally:
        fake_llm.reset()
    bull = limited["messages"][0]
    assert bull["status"] == "failed" and "rate limit" in bull["error"], bull["error"]
    assert "401" not in bull["error"] and "refused" not in bull["error"]
    assert REJECTED_KEY not in seen[seen.index("sk-test-good") :]


def test_an_error_inside_the_stream_fails_that_turn_with_its_partial_text_and_the_discussion_goes_on(
    service: Service, fake_llm: FakeLlm
) -> None:
    fake_llm.reset()
    topic = "Cut short [[fake:words=8,stream_error=3,only=speak as the Bear Researcher]]"
    _, detail = discuss(service, topic, ["bull", "bear"])
    assert detail["status"] == "completed"
    bull, bear, moderator = detail["messages"]
    assert bull["status"] == "completed" and moderator["status"] == "completed"
    assert bear["status"] == "failed" and "inside the stream" in bear["error"]
    assert len(bear["content"].split()) == 3  # the words streamed before the error are kept
