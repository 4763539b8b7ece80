"""A reboot of a bootstrapped host (a restart of the sandbox container) needs no manual step."""

from __future__ import annotations

import time

import docker
import pytest

from appliance.config import load_config
from appliance.errors import SshError
from appliance.remote import open_host
from tests.conftest import SandboxFactory, bootstrap_sandbox

pytestmark = pytest.mark.e2e


def test_services_come_back_after_a_reboot(sandbox_factory: SandboxFactory) -> None:
    box = bootstrap_sandbox(sandbox_factory("reboot")).sandbox
    docker.from_env().containers.get(box.name).restart(timeout=30)
    config = load_config(box.config_file)
    deadline = time.monotonic() + 90
    state = ""
    while time.monotonic() < deadline:
        try:
            with open_host(config) as host:
                state = host.run("systemctl is-system-running").stdout.strip()
                if state in ("running", "degraded"):
                    break
        except SshError:
            pass
        time.sleep(1)
    with open_host(config) as host:
        failed = host.run("systemctl --failed --no-legend --plain").stdout
        assert state == "running", failed
        units = host.run(
            "systemctl is-active docker docker-user-firewall fail2ban ssh; systemctl is-enabled appliance.service; "
            "ufw status | head -1; iptables -S DOCKER-USER | grep -c DROP"
        ).stdout.split("\n")
    assert units[:6] == ["active"] * 4 + ["enabled", "Status: active"]
    assert units[6] == "1"
