"""The runbook's log searches for the LLM alerts find the warning service/llm.py writes per failed upstream attempt
(`upstream LLM failed: category=… key=…a1b2 status=… model=…: …`): the lines are made by the client's own code."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import get_args

import pytest
from redis.asyncio import Redis

from service.llm import Failure, FailureCategory, LlmClient
from service.settings import load_settings
from tests.conftest import REPO

RUNBOOK = REPO / "docs" / "runbook.md"
CATEGORIES: tuple[FailureCategory, ...] = get_args(FailureCategory)
SEARCH = re.compile(r"`(upstream LLM failed[^`]*)`")
EXAMPLE = Failure("balance", 402, "Insufficient Balance")


def logged(failures: list[Failure], caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warning lines the real client writes for these failures of key `sk-test-a1b2`."""
    settings = load_settings(
        {
            "DATABASE_URL": "postgresql://unused/x",
            "REDIS_URL": "redis://127.0.0.1:1",  # never connected: recording a failure does not touch Redis
            "AI_MODEL_BASE_URL": "http://127.0.0.1:1/v1",
            "AI_API_KEY": "sk-test-a1b2",
            "JWT_SECRET": "j" * 32,
        }
    )

    async def record() -> None:
        client = LlmClient(settings, Redis.from_url(settings.redis_url))
        try:
            for failure in failures:
                client._record(failure, "sk-test-a1b2")  # the one place the line is formatted
        finally:
            await client.close()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.llm"):
        asyncio.run(record())
    return [r.getMessage() for r in caplog.records if r.name == "service.llm" and r.levelno == logging.WARNING]


def section(name: str) -> str:
    """The runbook text under `### name`, up to the next heading."""
    text = RUNBOOK.read_text(encoding="utf-8")
    start = text.index(f"\n### {name}\n")
    following = re.search(r"\n##+ ", text[start + 1 :])
    return text[start : start + 1 + following.start()] if following else text[start:]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("alert", "must_quote"),
    [
        ("LlmBalanceExhausted", "upstream LLM failed: category=balance"),
        ("LlmKeyRevoked", "upstream LLM failed: category=auth"),
        ("LlmRateLimited", "upstream LLM failed: category=rate_limit"),
        ("LlmErrors", "upstream LLM failed: category="),
    ],
)
def test_each_llm_alert_quotes_a_search_that_finds_its_log_lines(
    alert: str, must_quote: str, caplog: pytest.LogCaptureFixture
) -> None:
    searches = SEARCH.findall(section(alert))
    assert must_quote in searches, f"docs/runbook.md's {alert} does not quote `{must_quote}`"
    lines = logged([Failure(category, None, "upstream words") for category in CATEGORIES], caplog)
    assert len(lines) == len(CATEGORIES)
    for search in searches:
        found = [category for category, line in zip(CATEGORIES, lines, strict=True) if line.startswith(search)]
        assert found, f"{alert}: `{search}` is the start of no line service/llm.py writes"
        named = search.rsplit("=", 1)[-1]
        if named:  # a search ending in a category finds that one, not another that merely starts the same
            assert found == [named], f"{alert}: `{search}` finds {found}"


@pytest.mark.unit
def test_the_runbook_example_line_is_what_the_client_writes(caplog: pytest.LogCaptureFixture) -> None:
    examples = [line for line in SEARCH.findall(RUNBOOK.read_text(encoding="utf-8")) if " key=" in line]
    [line] = logged([EXAMPLE], caplog)
    assert examples == [line]
