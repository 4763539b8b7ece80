"""Honest outcomes, reasoning events and the prompt layout, through gunicorn (2 workers), PostgreSQL, Redis and the
fake LLM (issue 15)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.agents.orchestration import TurnFailure, failure_reason
from tests.service.api import User, create_discussion, new_user, read_events, wait_finished
from tests.service.stack import (
    FakeLlm,
    Service,
    running_service,
    scratch_redis_prefix,
    service_env,
)

PANEL = ["fundamentals", "bull", "bear"]


def turn_events(events: list[dict[str, Any]], kind: str, turn_index: int) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind and e["turn_index"] == turn_index]


def failed_discussions_count(service: Service) -> float:
    with httpx.Client(base_url=service.url, timeout=30) as client:
        body = client.get("/metrics").text
    line = 'cvm_discussion_duration_seconds_count{status="failed"}'
    return sum(float(row.split()[-1]) for row in body.splitlines() if row.startswith(line))


@pytest.mark.unit
def test_the_pool_running_dry_explains_a_discussion_better_than_a_timeout() -> None:
    failures = [
        TurnFailure("timeout", "turn exceeded AGENT_TIMEOUT=4 s"),
        TurnFailure(None, "a turn stored by the worker that ran before a resume"),
        TurnFailure("balance", "every API key of the pool has insufficient balance (upstream 402: ...)"),
        TurnFailure("rate_limit", "rate limit reached on every usable API key of the pool"),
    ]
    assert failure_reason(failures) == f"every agent turn failed (4 turns): {failures[2].error}"
    assert failure_reason(failures[:2]).endswith(": turn exceeded AGENT_TIMEOUT=4 s")  # unknown ranks last


@pytest.fixture(scope="module")
def broke_service(database_url: str, fake_llm: FakeLlm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service of its own (its own Redis prefix, so its key pool health is its own): every 402 it meets marks
    its keys out of balance, which must not leak into the shared service's pool."""
    tmp = tmp_path_factory.mktemp("broke")
    with scratch_redis_prefix("broke") as prefix:
        env = service_env(database_url, prefix, fake_llm, tmp, AI_API_KEY="sk-broke-aaaa,sk-broke-bbbb")
        with running_service(env, tmp / "service.log") as svc:
            yield svc


@pytest.mark.integration
def test_every_agent_turn_failing_fails_the_discussion_with_the_reason_and_no_moderator(
    broke_service: Service,
) -> None:
    failed_before = failed_discussions_count(broke_service)
    with httpx.Client(base_url=broke_service.url, timeout=30) as client:
        user = new_user(client)
        discussion = create_discussion(client, user, "Broke [[fake:words=5,status=402]]", PANEL)
        events = read_events(broke_service, client, user, discussion)
        detail = wait_finished(client, user, discussion)
        listed = client.get("/api/discussions", headers=user.headers).json()

    finished = events[-1]
    assert finished["status"] == "failed" and "insufficient balance" in finished["error"].lower()
    assert finished["error"].startswith("every agent turn failed (3 turns): ")
    assert [e["role"] for e in events if e["type"] == "agent_started"] == PANEL  # the moderator never spoke
    assert detail["status"] == "failed" and detail["error"] == finished["error"] and detail["verdict"] is None
    assert [(m["role"], m["status"]) for m in detail["messages"]] == [(role, "failed") for role in PANEL]
    assert [(d["id"], d["status"], d["error"]) for d in listed] == [(discussion, "failed", finished["error"])]
    assert failed_discussions_count(broke_service) == failed_before + 1


@pytest.mark.integration
def test_some_failed_turns_still_complete_the_discussion(client: httpx.Client, service: Service, user: User) -> None:
    discussion = create_discussion(client, user, "Partly [[fake:words=5,status=400,only=Bull]]", PANEL)
    events = read_events(service, client, user, discussion)
    detail = wait_finished(client, user, discussion)
    assert events[-1]["status"] == "completed" and events[-1]["error"] is None
    assert detail["status"] == "completed" and detail["error"] is None and detail["verdict"] is not None
    assert [(m["role"], m["status"]) for m in detail["messages"]] == [
        ("fundamentals", "completed"),
        ("bull", "failed"),
        ("bear", "completed"),
        ("moderator", "completed"),
    ]
    assert "400" in detail["messages"][1]["error"]


@pytest.mark.integration
def test_reasoning_streams_as_its_own_events_before_the_answer(
    client: httpx.Client, service: Service, user: User
) -> None:
    # deepseek-reasoner: reasoning_content deltas first (here 40 words, 20 ms apart), then the answer.
    topic = "Think first [[fake:reasoning=40,words=20,delay=0.02]]"
    discussion = create_discussion(client, user, topic, ["bull", "bear"])
    events = read_events(service, client, user, discussion)
    detail = wait_finished(client, user, discussion)
    assert detail["status"] == "completed"
    streamed = [e for e in events if e["type"] in ("token", "reasoning")]
    assert streamed and all(e["text"] for e in streamed)  # never an empty event
    for message in detail["messages"]:
        turn = message["turn_index"]
        kinds = [e["type"] for e in events if e["type"] in ("token", "reasoning") and e["turn_index"] == turn]
        assert kinds.index("token") > 0 and "reasoning" not in kinds[kinds.index("token") :]
        assert 1 < len(turn_events(events, "reasoning", turn)) < 40  # batched: neither per delta nor per turn
        assert "".join(e["text"] for e in turn_events(events, "reasoning", turn)) == message["reasoning"]
        assert "".join(e["text"] for e in turn_events(events, "token", turn)) == message["content"]
        assert len(message["reasoning"].split()) == 40  # still stored on the message


@pytest.mark.integration
def test_a_model_rejecting_successive_same_role_messages_answers_every_turn(
    client: httpx.Client, service: Service, user: User
) -> None:
    # deepseek-reasoner as it launched: reasoning first, and a 400 for two successive user (or assistant) messages.
    topic = "Strict [[fake:strict_roles=1,reasoning=3,words=6]]"
    discussion = create_discussion(client, user, topic, PANEL, rounds=2)
    detail = wait_finished(client, user, discussion)
    assert [(m["role"], m["status"], m["error"]) for m in detail["messages"]] == [
        *[(role, "completed", None) for role in PANEL * 2],
        ("moderator", "completed", None),
    ]
    assert detail["status"] == "completed" and detail["verdict"] is not None
