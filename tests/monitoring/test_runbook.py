"""The runbook's log searches for the LLM alerts find the warning the API writes per failed upstream attempt
(issue #15's contract, section 3: `upstream LLM failed: category=… key=…a1b2 status=… model=…: …`)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

RUNBOOK = REPO / "docs" / "runbook.md"
# The contract's categories and line shape; service/llm.py does not export its format yet.
CATEGORIES = (
    "auth",
    "balance",
    "rate_limit",
    "server",
    "bad_request",
    "timeout",
    "cut",
    "stream_error",
    "malformed",
    "connection",
)
LOG_LINE = re.compile(
    r"^upstream LLM failed: category=(?P<category>[a-z_]+) key=…\S{4} status=(?:\d{3}|-) model=\S+: .+$"
)
SEARCH = re.compile(r"`(upstream LLM failed[^`]*)`")


def logged(category: str) -> str:
    """A line as the contract has the API write it, for one category."""
    return f"upstream LLM failed: category={category} key=…a1b2 status=402 model=deepseek-chat: Insufficient Balance"


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
def test_each_llm_alert_quotes_a_search_that_finds_its_log_lines(alert: str, must_quote: str) -> None:
    searches = SEARCH.findall(section(alert))
    assert must_quote in searches, f"docs/runbook.md's {alert} does not quote `{must_quote}`"
    for search in searches:
        found = [category for category in CATEGORIES if logged(category).startswith(search)]
        assert found, f"{alert}: `{search}` is the start of no line the API writes"
        # A search ending in a category finds that category only, not one that merely starts the same.
        if search.split("=")[-1]:
            assert found == [search.split("=")[-1]], f"{alert}: `{search}` names no category exactly"


@pytest.mark.unit
def test_the_runbook_example_line_has_the_logged_shape() -> None:
    examples = [line for line in SEARCH.findall(RUNBOOK.read_text(encoding="utf-8")) if " key=" in line]
    assert examples, "docs/runbook.md shows no whole example line"
    for example in examples:
        match = LOG_LINE.match(example)
        assert match, f"docs/runbook.md's example `{example}` is not the logged shape"
        assert match["category"] in CATEGORIES
