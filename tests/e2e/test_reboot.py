"""A reboot of a bootstrapped host (a restart of the sandbox container) needs no manual step.

It runs on the destructive sandbox (tests/e2e/conftest.py), after the backup tests have used it."""

from __future__ import annotations

import time

import docker
import httpx
import pytest

from appliance.errors import SshError
from appliance.remote import open_host
from tests.e2e.conftest import Rig
from tests.e2e.traffic import Site

pytestmark = pytest.mark.e2e


def test_services_come_back_after_a_reboot(rig: Rig) -> None:
    box, config = rig.sandbox, rig.config
    with open_host(config) as host:
        site = Site(box.https_port, host.run("cat /opt/appliance/shared/certs/ca.pem").stdout)
    docker.from_env().containers.get(box.name).restart(timeout=30)
    restarted = time.monotonic()
    assert serving_within(site, 60), "the current release did not serve within 60 s of the restart"
    print(f"serving again {time.monotonic() - restarted:.1f}s after the restart")
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


def serving_within(site: Site, seconds: float) -> bool:
    """Whether /api/health through nginx answers 200 with the database connected within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with site.client() as client:
                answer = client.get("/api/health", timeout=3)
            if answer.status_code == 200 and answer.json()["database"]["connected"]:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False
