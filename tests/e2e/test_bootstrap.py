"""`inv bootstrap` against the sandbox CVM over real SSH, graded by real tools (ssh-audit, lynis)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from appliance.executor import Executor
from appliance.images import images_on_host
from appliance.remote import RemoteHost
from appliance.sandbox import BASE_IMAGE
from tests.conftest import REPO, Bootstrapped, inv

pytestmark = pytest.mark.e2e

TOTALS = re.compile(r"(\d+) ok, (\d+) changed, (\d+) pending, (\d+) failed")


def totals(output: str) -> tuple[int, int, int, int]:
    match = TOTALS.search(output)
    assert match, output
    ok, changed, pending, failed = (int(group) for group in match.groups())
    return ok, changed, pending, failed


def daemon_pids(host: RemoteHost) -> str:
    """The PIDs of the listening sshd and of dockerd: a restart changes them."""
    return host.run("cat /run/sshd.pid; pidof dockerd").stdout


def test_first_run_changes_the_host_and_fails_nothing(bootstrapped: Bootstrapped) -> None:
    ok, changed, pending, failed = totals(bootstrapped.first_run.stdout)
    assert (pending, failed) == (0, 0)
    assert changed > 30, bootstrapped.first_run.stdout
    print(f"first bootstrap: {bootstrapped.seconds:.1f}s, {changed} changed, {ok} ok")


def test_second_run_changes_nothing_restarts_nothing_within_20s(
    bootstrapped: Bootstrapped, bootstrapped_host: RemoteHost
) -> None:
    before = daemon_pids(bootstrapped_host)
    started = time.monotonic()
    run = inv("bootstrap", "--config", str(bootstrapped.sandbox.config_file))
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stdout + run.stderr
    assert totals(run.stdout)[1:] == (0, 0, 0), run.stdout
    assert daemon_pids(bootstrapped_host) == before
    print(f"second bootstrap: {elapsed:.1f}s")
    assert elapsed <= 20, run.stdout


def test_check_on_a_converged_host_has_nothing_pending(bootstrapped: Bootstrapped) -> None:
    run = inv("bootstrap", "--check", "--config", str(bootstrapped.sandbox.config_file))
    assert run.returncode == 0, run.stderr
    assert totals(run.stdout)[1:] == (0, 0, 0), run.stdout


def test_check_and_diff_show_a_drifted_file_without_touching_it(
    bootstrapped: Bootstrapped, bootstrapped_host: RemoteHost
) -> None:
    bootstrapped_host.run("echo 'edited by hand' >> /etc/issue")
    drifted = bootstrapped_host.run("cat /etc/issue").stdout
    run = inv("bootstrap", "--check", "--diff", "--config", str(bootstrapped.sandbox.config_file))
    assert run.returncode == 0, run.stderr
    assert "--- /etc/issue (host)\n+++ /etc/issue (wanted)\n" in run.stdout
    assert "-edited by hand" in run.stdout
    assert re.search(r"file /etc/issue\s+pending", run.stdout)
    assert bootstrapped_host.run("cat /etc/issue").stdout == drifted  # check mode changed nothing
    fixed = inv("bootstrap", "--config", str(bootstrapped.sandbox.config_file))
    assert re.search(r"file /etc/issue\s+changed", fixed.stdout)
    assert "edited by hand" not in bootstrapped_host.run("cat /etc/issue").stdout


def ssh_audit(port: int) -> tuple[dict[str, Any], list[tuple[str, str]], int]:
    """ssh-audit's report on the sshd at 127.0.0.1:PORT, the algorithms it fails, and its exit status."""
    program = shutil.which("ssh-audit", path=str(Path(__file__).resolve().parents[2] / ".venv/bin"))
    assert program, "ssh-audit comes with the dev extra"
    report = subprocess.run(
        [program, "-j", "--skip-rate-test", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120
    )
    audit = json.loads(report.stdout)
    failures = [
        (kind, item["algorithm"])
        for kind in ("kex", "key", "enc", "mac")
        for item in audit[kind]
        if item.get("notes", {}).get("fail")
    ]
    return audit, failures, report.returncode


def test_ssh_audit_finds_no_failures(bootstrapped: Bootstrapped) -> None:
    _, failures, returncode = ssh_audit(bootstrapped.sandbox.ssh_port)
    assert failures == []
    assert returncode in (0, 2)  # 2: warnings only (classic key exchanges are not post-quantum)


def test_key_login_works_and_password_login_is_refused(bootstrapped: Bootstrapped) -> None:
    box = bootstrapped.sandbox
    common = ["-p", str(box.ssh_port), "-o", f"UserKnownHostsFile={box.known_hosts}", "-o", "ConnectTimeout=10"]
    with_key = subprocess.run(
        ["ssh", *common, "-i", str(box.key_file), "-o", "BatchMode=yes", "root@127.0.0.1", "echo in"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert with_key.stdout == "in\n", with_key.stderr
    password = subprocess.run(
        [
            "ssh",
            *common,
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "NumberOfPasswordPrompts=0",
            "root@127.0.0.1",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert password.returncode == 255
    assert "Permission denied (publickey)" in password.stderr


def reachable(address: str, port: int) -> bool:
    """Whether an HTTP GET to address:port gets an answer within 3 s."""
    try:
        with socket.create_connection((address, port), timeout=3) as connection:
            connection.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return connection.recv(12).startswith(b"HTTP/1.0 200")
    except OSError:
        return False


def test_published_ports_other_than_web_are_closed_to_the_outside(
    bootstrapped: Bootstrapped, bootstrapped_host: RemoteHost
) -> None:
    box = bootstrapped.sandbox
    engine = docker.from_env()
    send_base = images_on_host(engine, [BASE_IMAGE])
    assert Executor(bootstrapped_host).apply(send_base).status in ("changed", "ok")
    started = bootstrapped_host.run(
        f"docker run -d --pull never --name portprobe -p 0.0.0.0:8080:8000 -p 80:8000 -p 443:8000 {BASE_IMAGE} "
        "python3 -m http.server 8000"
    )
    assert started.exit_code == 0, started.stderr
    try:
        address = engine.containers.get(box.name).attrs["NetworkSettings"]["IPAddress"]
        deadline = time.monotonic() + 20
        while not reachable(address, 80) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert reachable(address, 80)
        assert reachable(address, 443)
        assert not reachable(address, 8080)
        assert bootstrapped_host.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/").stdout == "200"
    finally:
        bootstrapped_host.run("docker rm -f portprobe")


def test_lynis_hardening_index(bootstrapped: Bootstrapped, bootstrapped_host: RemoteHost) -> None:
    profile = (REPO / "tests/e2e/lynis-container.prf").read_bytes()
    assert bootstrapped_host.upload("/root/lynis-container.prf", profile, 0o600, "root", "root").exit_code == 0
    installed = bootstrapped_host.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q lynis", timeout=300)
    assert installed.exit_code == 0, installed.stderr
    indexes = {}
    for label, flags in (("plain", ""), ("container profile", "--profile /root/lynis-container.prf")):
        audit = bootstrapped_host.run(
            f"lynis audit system --quick --no-colors {flags} >/dev/null 2>&1; "
            "grep '^hardening_index=' /var/log/lynis-report.dat",
            timeout=300,
        )
        indexes[label] = int(audit.stdout.strip().split("=")[1])
    print(f"lynis hardening index: {indexes}")
    assert indexes["container profile"] >= 80
    assert indexes["plain"] >= 75


def test_units_and_files_in_place(bootstrapped_host: RemoteHost) -> None:
    states = bootstrapped_host.run(
        "systemctl is-enabled appliance.service docker docker-user-firewall fail2ban; "
        "systemctl is-active docker docker-user-firewall fail2ban; ufw status | head -1; "
        "stat -c '%a %n' /opt/appliance/shared/certs/privkey.pem /etc/ssh/sshd_config.d/00-appliance-hardening.conf"
    ).stdout.split("\n")
    assert states[:7] == ["enabled"] * 4 + ["active"] * 3
    assert states[7] == "Status: active"
    assert states[8:10] == [
        "600 /opt/appliance/shared/certs/privkey.pem",
        "600 /etc/ssh/sshd_config.d/00-appliance-hardening.conf",
    ]
    record = json.loads(bootstrapped_host.run("cat /opt/appliance/shared/host.json").stdout)
    assert record["compose"].startswith("v1 ")  # Debian 12 ships Compose v1
    assert bootstrapped_host.run("/opt/appliance/bin/compose version --short").exit_code == 0
    expiry = bootstrapped_host.run("cat /opt/appliance/shared/metrics/tls.prom").stdout
    assert re.search(r"^appliance_tls_cert_expiry_timestamp_seconds \d{10}$", expiry, re.MULTILINE)


def test_operator_account_gets_key_docker_and_narrow_sudo(bootstrapped: Bootstrapped, tmp_path: Path) -> None:
    box = bootstrapped.sandbox
    config = tmp_path / "with-operator.toml"
    config.write_text(box.config_file.read_text() + '\n[host]\noperator_user = "deployer"\n')
    run = inv("bootstrap", "--config", str(config))
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"user deployer\s+changed", run.stdout)

    ssh = [
        "ssh",
        "-p",
        str(box.ssh_port),
        "-i",
        str(box.key_file),
        "-o",
        f"UserKnownHostsFile={box.known_hosts}",
        "-o",
        "BatchMode=yes",
        "deployer@127.0.0.1",
    ]
    groups = subprocess.run([*ssh, "id -nG"], capture_output=True, text=True, timeout=30)
    assert "docker" in groups.stdout.split(), groups.stderr
    allowed = subprocess.run(
        [*ssh, "sudo -n /opt/appliance/bin/compose version --short"], capture_output=True, text=True, timeout=30
    )
    assert allowed.returncode == 0, allowed.stderr
    refused = subprocess.run([*ssh, "sudo -n id"], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0
    assert "a password is required" in refused.stderr or "not allowed" in refused.stderr
    again = inv("bootstrap", "--config", str(config))
    assert totals(again.stdout)[1:] == (0, 0, 0), again.stdout
