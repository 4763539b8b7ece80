"""The release stack after a switch: Compose runs only for a service whose definition differs from its container."""

from __future__ import annotations

import pytest

from appliance.config import load_config
from appliance.deploy import ReleaseStack
from appliance.release_commands import defined_hashes, release_stack, running_hashes, stack_changes
from appliance.releases import Release
from appliance.steps import Fact, Note, Run
from tests.conftest import REPO

pytestmark = pytest.mark.unit

DEFINED = "nginx aaa\npostgres bbb\nredis ccc\nrelay ddd\nprometheus eee\n"


@pytest.fixture()
def release() -> Release:
    return Release(load_config(REPO / "appliance.example.toml").settings, "v2")


def test_a_service_differs_when_its_hash_does_when_none_runs_and_when_the_release_no_longer_defines_it() -> None:
    assert stack_changes(DEFINED, DEFINED) == []
    running = "nginx aaa\npostgres bbb\nredis ccc\nrelay old\nllm-stub fff\n"  # relay changed, prometheus not running
    assert stack_changes(DEFINED, running) == ["llm-stub", "prometheus", "relay"]
    assert stack_changes(DEFINED, "\n" + DEFINED + "\n") == []  # empty lines are no services


def test_nothing_changed_runs_no_compose(release: Release) -> None:
    step = ReleaseStack(release)
    assert step.plan({"defined": Fact(DEFINED, 0), "running": Fact(DEFINED, 0)}) == [
        Note("every service already runs as the release defines it")
    ]


def test_a_changed_service_brings_the_whole_release_stack_up_naming_what_changed(release: Release) -> None:
    running = DEFINED.replace("relay ddd", "relay v1-image").replace("prometheus eee\n", "")
    (action,) = ReleaseStack(release).plan({"defined": Fact(DEFINED, 0), "running": Fact(running, 0)})
    assert action == Run(release_stack(release), "prometheus, relay as the release defines it")


def test_hashes_that_cannot_be_read_leave_the_answer_to_compose_up(release: Release) -> None:
    facts = {"defined": Fact("ERROR: no such image\n", 1), "running": Fact(DEFINED, 0)}
    assert ReleaseStack(release).plan(facts) == [Run(release_stack(release), "every service as the release defines it")]


def test_the_probes_ask_compose_for_the_release_definition_and_docker_for_the_running_stack(release: Release) -> None:
    assert defined_hashes(release) == (
        "cd /opt/appliance/releases/v2 && /opt/appliance/bin/compose --project-name agents --file docker-compose.yml "
        "config '--hash=*'"
    )
    running = running_hashes(release)
    assert "--filter label=com.docker.compose.project=agents --filter label=com.docker.compose.oneoff=False" in running
    assert '{{.Label "com.docker.compose.config-hash"}}' in running
