"""The long-lived stack in a deploy and after a switch: Compose runs only for a service whose definition differs from
its container; monitoring files are published into a stable folder and their readers reloaded."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from appliance.config import load_config
from appliance.release_commands import (
    MONITORING_READERS,
    defined_hashes,
    monitoring_changes,
    publish_monitoring,
    release_stack,
    running_hashes,
    save_hashes,
    saved_or_defined_hashes,
    seed_monitoring,
    stack_changes,
    stack_settled,
    stack_up,
    tag_stack_image,
)
from appliance.releases import Release
from appliance.render import MONITORING_IN_CONTAINER, release_files, stack_api_image
from appliance.secrets import load_secrets
from appliance.stack_steps import MonitoringFiles, ReleaseStack, StackUp
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


def test_a_changed_service_brings_up_only_what_changed_naming_it(release: Release) -> None:
    running = DEFINED.replace("relay ddd", "relay v1-image").replace("prometheus eee\n", "")
    (action,) = ReleaseStack(release).plan({"defined": Fact(DEFINED, 0), "running": Fact(running, 0)})
    assert action == Run(release_stack(release, ("prometheus", "relay")), "prometheus, relay as the release defines it")
    assert action.command.endswith("up -d --remove-orphans prometheus relay")


def test_a_service_the_release_no_longer_defines_goes_with_an_up_of_the_whole_stack(release: Release) -> None:
    (action,) = ReleaseStack(release).plan({"defined": Fact(DEFINED, 0), "running": Fact(DEFINED + "old x\n", 0)})
    assert action == Run(release_stack(release), "old as the release defines it")


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


def test_a_deploy_whose_stack_is_already_as_defined_only_checks_the_databases(release: Release) -> None:
    running = DEFINED.replace("nginx aaa", "nginx old")  # nginx is the switch's: the stack-up leaves it
    (action,) = StackUp(release).plan({"defined": Fact(DEFINED, 0), "running": Fact(running, 0)})
    assert action.why == "every service already runs as the release defines it; databases healthy"  # type: ignore[union-attr]
    assert " up " not in action.command  # type: ignore[union-attr]
    save = " && " + save_hashes(release, DEFINED)
    assert action == Run(seed_monitoring(release) + stack_settled(release) + save, action.why)  # type: ignore[union-attr]


def test_a_deploy_starts_only_the_services_that_differ_and_never_nginx(release: Release) -> None:
    running = DEFINED.replace("relay ddd", "relay old").replace("nginx aaa", "nginx old")
    (action,) = StackUp(release).plan({"defined": Fact(DEFINED, 0), "running": Fact(running, 0)})
    assert action == Run(stack_up(release, ("relay",)) + " && " + save_hashes(release, DEFINED), "start nginx, relay")
    assert "services=relay && " in action.command
    unreadable = StackUp(release).plan({"defined": Fact("", 1), "running": Fact(running, 0)})
    assert unreadable == [Run(stack_up(release), "start")]


def test_the_stack_runs_the_api_image_by_a_tag_naming_its_content(release: Release) -> None:
    settings = release.settings
    assert stack_api_image(settings, "v2", "sha256:0123456789abcdef0123") == "cvm-appliance/api:id-0123456789ab"
    assert stack_api_image(settings, "v2", "") == "cvm-appliance/api:v2"  # check mode, before the build
    assert tag_stack_image(release, "cvm-appliance/api:id-0123456789ab") == (
        "docker tag cvm-appliance/api:v2 cvm-appliance/api:id-0123456789ab"
    )


def test_the_monitoring_services_read_the_shared_folder_and_the_relay_the_content_tag(tmp_path: Path) -> None:
    config = load_config(REPO / "tests/appliance/render_golden/sandbox-config.toml", "sandbox")
    secrets = load_secrets(tmp_path / "secrets.env", {})
    files = release_files(config, secrets, "v2", image_id="sha256:0123456789abcdef")
    compose = yaml.safe_load(next(f.content for f in files if f.path.endswith("/docker-compose.yml")))["services"]
    mount = f"{config.settings.paths.monitoring}:{MONITORING_IN_CONTAINER}:ro"
    for service in ("prometheus", "alertmanager", "relay"):
        assert mount in compose[service]["volumes"], service
        assert not [volume for volume in compose[service]["volumes"] if "releases/" in volume or volume.startswith(".")]
    assert compose["relay"]["image"] == compose["llm-stub"]["image"] == "cvm-appliance/api:id-0123456789ab"


def test_monitoring_files_seed_then_publish_only_what_changed_by_rename(release: Release, tmp_path: Path) -> None:
    """Through real bash on a scratch base folder (no stack runs there, so no service is told)."""
    settings = release.settings.model_copy(update={"base_dir": str(tmp_path)})
    local = Release(settings, "v2")
    source, shared = Path(local.directory) / "monitoring", Path(settings.paths.monitoring)
    source.mkdir(parents=True)
    for name in MONITORING_READERS:
        (source / name).write_text(f"{name} of v2\n")

    def bash(command: str) -> str:
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert bash(monitoring_changes(local)).split() == list(MONITORING_READERS)  # nothing published yet
    bash(seed_monitoring(local) + "true")
    assert {path.name: path.read_text() for path in shared.iterdir()} == {n: f"{n} of v2\n" for n in MONITORING_READERS}
    assert bash(monitoring_changes(local)) == ""
    (source / "alertmanager.yml").write_text("routes changed\n")
    bash(seed_monitoring(local) + "true")  # a seed never overwrites
    assert (shared / "alertmanager.yml").read_text() == "alertmanager.yml of v2\n"
    changed = bash(monitoring_changes(local)).split()
    assert changed == ["alertmanager.yml"]
    (action,) = MonitoringFiles(local).plan({"changed": Fact("\n".join(changed) + "\n", 0)})
    assert action.why == "alertmanager.yml; alertmanager told"  # type: ignore[union-attr]
    inode = (shared / "alertmanager.yml").stat().st_ino
    bash(action.command)  # type: ignore[union-attr]
    assert (shared / "alertmanager.yml").read_text() == "routes changed\n"
    assert (shared / "alertmanager.yml").stat().st_ino != inode  # renamed into place, as the folder mount sees it
    assert sorted(path.name for path in shared.iterdir()) == sorted(MONITORING_READERS)  # no .next left
    assert MonitoringFiles(local).plan({"changed": Fact("", 0)}) == [
        Note("shared/monitoring already holds the release's files")
    ]


def test_publishing_tells_each_reader_its_own_way(release: Release) -> None:
    command = publish_monitoring(release, ["prometheus.yml", "alerts.yml", "notify.py"])
    assert command.count("docker kill -s HUP") == 1  # Prometheus once, for both of its files
    assert "label=com.docker.compose.service=prometheus" in command
    assert 'docker restart -t 5 "$c"' in command and "label=com.docker.compose.service=relay" in command
    assert "alertmanager" not in command


def test_a_deploy_saves_the_definition_a_rollback_reads_while_the_release_files_are_unchanged(
    release: Release, tmp_path: Path
) -> None:
    """Through real bash: saved by the stack-up, read back by the release stack, ignored once a stack file changes."""
    settings = release.settings.model_copy(update={"base_dir": str(tmp_path)})
    local = Release(settings, "v2")
    folder = Path(local.directory)
    folder.mkdir(parents=True)
    (folder / "docker-compose.yml").write_text("services: {}\n")
    (folder / "relay.env").write_text("A=1\n")
    (action,) = StackUp(local).plan({"defined": Fact(DEFINED, 0), "running": Fact(DEFINED, 0)})
    assert action.command.endswith(save_hashes(local, DEFINED))  # type: ignore[union-attr]
    subprocess.run(["bash", "-c", save_hashes(local, DEFINED)], check=True, timeout=30)
    read = ReleaseStack(local).probes()["defined"]
    assert read == saved_or_defined_hashes(local)

    def probe() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", read], capture_output=True, text=True, timeout=30)

    assert probe().stdout == DEFINED
    (folder / "relay.env").write_text("A=2\n")  # a deploy of the same version name rewrote its files
    again = probe()
    assert again.stdout == "" and again.returncode != 0  # Compose asked instead (none in this scratch folder)
