"""`inv llm.check` and deploy's LLM keys warning as commands: what runs on the host, how its outcome reads."""

from __future__ import annotations

import shlex

import pytest

from appliance.config import load_config
from appliance.llm_check import LlmKeysWarning, check_command, preflight_command, verdicts_line
from appliance.releases import Release
from appliance.steps import Fact, Note
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def release() -> Release:
    return Release(load_config(REPO / "appliance.example.toml", "production").settings, "20260501-120000-abc1234")


def words_of(command: str) -> list[str]:
    words = shlex.split(command.split(" && ", 1)[1])
    assert words[words.index("--file") + 1] == "api.yml" and "--project-name" in words
    return words[words.index("--file") + 2 :]


def test_the_check_runs_the_service_module_in_the_serving_api_or_a_one_off_container_of_the_new_release() -> None:
    assert words_of(check_command(release())) == ["exec", "-T", "api", "python3", "-m", "service.llm_check"]
    assert words_of(preflight_command(release())) == [
        "run", "--rm", "--no-deps", "-T", "api", "python3", "-m", "service.llm_check",
    ]  # fmt: skip
    assert check_command(release()).startswith(f"cd {release().directory} && ")


def test_the_deploy_warning_is_one_line_and_never_a_failure() -> None:
    step = LlmKeysWarning(release())
    assert step.probes() == {"verdicts": preflight_command(release())}
    good = Fact("sk-…a1b2 no balance (upstream 402: Insufficient Balance)\nsk-…c3d4 ok\n", 0)
    assert step.plan({"verdicts": good}) == [
        Note("sk-…a1b2 no balance (upstream 402: Insufficient Balance); sk-…c3d4 ok")
    ]
    none = Fact("sk-…a1b2 revoked (upstream 401: Authentication Fails)\n", 1)
    assert step.plan({"verdicts": none}) == [
        Note(
            "warning: no usable LLM key: sk-…a1b2 revoked (upstream 401: Authentication Fails)"
            " (inv llm.check to try again)"
        )
    ]
    assert verdicts_line("", 1) == "warning: LLM keys not checked (exit 1; is the release on the host?)"
