"""A Debian 13 (trixie) host end to end: the nearest this rig gets to Ubuntu 24.04 (Compose v2, OpenSSH 10,
Python 3.13, systemd 257). One trixie sandbox for the whole module, bootstrapped and deployed once; the
bookworm suite covers each feature in depth, this tier proves the same appliance works on the newer stack."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import pytest

from appliance.config import Config, load_config
from appliance.remote import RemoteHost, open_host
from tests.conftest import Bootstrapped, SandboxFactory, bootstrap_sandbox, deploy_sandbox, inv
from tests.e2e.test_bootstrap import ssh_audit
from tests.e2e.test_deploy import assert_streams_a_discussion
from tests.e2e.test_reboot import serving_within
from tests.e2e.traffic import Site

pytestmark = pytest.mark.e2e

# What would change if bootstrap restarted anything: each running unit's invocation, each container's start.
RUNNING_STATE = (
    "for unit in $(systemctl list-units --type=service --state=running --no-legend --plain | awk '{print $1}'); do "
    'echo "$unit $(systemctl show -P InvocationID "$unit")"; done; '
    "docker ps -q | xargs -r docker inspect -f '{{.Name}} {{.State.StartedAt}}'"
)


@dataclass(frozen=True)
class Trixie:
    bootstrapped: Bootstrapped
    config: Config
    site: Site


@pytest.fixture(scope="module")
def trixie(module_sandbox_factory: SandboxFactory) -> Trixie:
    """A trixie sandbox after its first bootstrap and its first deploy (v1)."""
    started = time.monotonic()
    box = module_sandbox_factory("trixie", "trixie")
    bootstrapped = bootstrap_sandbox(box)
    deploy_sandbox(box)
    config = load_config(box.config_file)
    with open_host(config) as host:
        site = Site(box.https_port, host.run("cat /opt/appliance/shared/certs/ca.pem").stdout)
    elapsed = time.monotonic() - started
    print(f"trixie sandbox up, bootstrapped ({bootstrapped.seconds:.0f}s) and deployed in {elapsed:.0f}s")
    return Trixie(bootstrapped, config, site)


@pytest.fixture()
def host(trixie: Trixie) -> Iterator[RemoteHost]:
    with open_host(trixie.config) as remote:
        yield remote


def test_first_bootstrap_succeeds_on_debian_13_with_compose_v2(trixie: Trixie) -> None:
    run = trixie.bootstrapped.first_run
    assert "Debian GNU/Linux 13 (trixie) (x86_64)" in run.stdout
    # Docker and Compose v2 from the distribution (docker-compose 2.x is the CLI plugin there).
    assert re.search(r"packages: docker\s+changed .* install docker\.io docker-cli docker-compose\n", run.stdout)
    assert " 0 failed in " in run.stdout


def test_the_release_runs_on_compose_v2_from_the_host_facts_to_the_unit(trixie: Trixie, host: RemoteHost) -> None:
    record = json.loads(host.run("cat /opt/appliance/shared/host.json").stdout)
    assert record["os"] == "debian 13"
    assert record["compose"].startswith("v2 2.")
    assert record["compose_command"] == "docker compose"
    wrapper = host.run(f"cat {record['compose_wrapper']}").stdout
    assert wrapper.splitlines()[-1] == 'exec docker compose "$@"'
    unit = host.run("systemctl cat appliance.service").stdout
    assert "ExecStart=/opt/appliance/bin/stack.sh appliance up" in unit
    assert 'compose="$base/bin/compose"' in host.run("cat /opt/appliance/bin/stack.sh").stdout
    # Every container of the release was made by Compose v2 (v1 names them project_service_1).
    made_by = host.run(
        "docker ps --filter label=com.docker.compose.project "
        "--format '{{.Names}} {{.Label \"com.docker.compose.version\"}}'"
    ).stdout.splitlines()
    assert any(line.startswith("appliance-api-v1-api-1 2.") for line in made_by), made_by
    assert all(line.split()[1].startswith("2.") for line in made_by), made_by
    assert host.run("python3 -c 'import sys; print(sys.version_info[:2])'").stdout.strip() == "(3, 13)"


def running_state(host: RemoteHost) -> dict[str, str]:
    """Each running service's invocation and each container's start time, by name."""
    return dict(line.split(" ", 1) for line in host.run(RUNNING_STATE).stdout.splitlines() if " " in line)


def test_second_bootstrap_changes_nothing_and_restarts_nothing(trixie: Trixie, host: RemoteHost) -> None:
    before = running_state(host)
    run = inv("bootstrap", "--config", str(trixie.bootstrapped.sandbox.config_file))
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 changed, 0 pending, 0 failed" in run.stdout, run.stdout
    after = running_state(host)
    # A timer's short job may come or go between the two looks; what ran throughout must be the same run.
    lasting = before.keys() & after.keys()
    assert {
        "ssh.service",
        "docker.service",
        "fail2ban.service",
        "/appliance-nginx-1",
        "/appliance-api-v1-api-1",
    } <= lasting
    assert {name: after[name] for name in lasting} == {name: before[name] for name in lasting}


def test_openssh_10_is_graded_without_failures_and_paramiko_speaks_post_quantum(
    trixie: Trixie, caplog: pytest.LogCaptureFixture
) -> None:
    audit, failures, returncode = ssh_audit(trixie.bootstrapped.sandbox.ssh_port)
    assert failures == []
    assert returncode in (0, 2), audit  # 2: warnings only
    assert audit["kex"][0]["algorithm"] == "mlkem768x25519-sha256"
    # Fabric's Paramiko (4+) agrees on the post-quantum exchange; the classic fallback stays for older ones.
    with caplog.at_level(logging.DEBUG, logger="paramiko.transport"), open_host(trixie.config) as remote:
        assert remote.run("true").exit_code == 0
    assert "Kex: mlkem768x25519-sha256" in caplog.messages


def test_websocket_discussion_through_nginx(trixie: Trixie) -> None:
    assert_streams_a_discussion(trixie.site)


def served_version(site: Site) -> object:
    with site.client() as client:
        answer = client.get("/api/health")
    assert answer.status_code == 200, answer.text
    return answer.json()["version"]


def test_deploy_v2_then_roll_back_to_v1(trixie: Trixie, host: RemoteHost) -> None:
    config = str(trixie.bootstrapped.sandbox.config_file)
    assert served_version(trixie.site) == "v1"
    run = inv("deploy", "--version", "v2", "--image", "cvm-appliance/api:v1", "--config", config)
    assert run.returncode == 0, run.stdout + run.stderr
    assert served_version(trixie.site) == "v2"
    back = inv("rollback", "--config", config)
    assert back.returncode == 0, back.stdout + back.stderr
    assert served_version(trixie.site) == "v1"
    assert "appliance-api-v1-api-1" in host.run("docker ps --format '{{.Names}}'").stdout.split()


def test_a_restart_of_the_host_brings_the_stack_back(trixie: Trixie) -> None:
    box = trixie.bootstrapped.sandbox
    docker.from_env().containers.get(box.name).restart(timeout=30)
    restarted = time.monotonic()
    assert serving_within(trixie.site, 90), "the current release did not serve within 90 s of the restart"
    print(f"trixie: serving again {time.monotonic() - restarted:.1f}s after the restart")
    assert served_version(trixie.site) == "v1"
    with open_host(trixie.config) as remote:
        state = remote.run("systemctl is-system-running --wait").stdout.strip()
        assert state == "running", remote.run("systemctl --failed --no-legend --plain").stdout
        assert remote.run("systemctl is-active appliance.service").stdout.strip() == "active"
