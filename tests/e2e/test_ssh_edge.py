"""The sandbox CVM over real SSH: reachable as documented, and every SSH failure is one clear line."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import SshError
from appliance.remote import RemoteHost, connect
from appliance.sandbox import Sandbox, generate_key
from appliance.shell import sh
from tests.conftest import free_port, inv

pytestmark = pytest.mark.e2e


def timed_inv(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    run = inv(*args)
    return run, time.monotonic() - started


def variant(sandbox: Sandbox, tmp_path: Path, **replacements: str) -> Path:
    """The sandbox's config with some lines changed."""
    text = sandbox.config_file.read_text()
    for old, new in replacements.items():
        text = text.replace(old, new)
    path = tmp_path / "variant.toml"
    path.write_text(text)
    return path


def test_plain_ssh_reaches_a_running_systemd(shared_sandbox: Sandbox) -> None:
    run = subprocess.run(
        [
            "ssh",
            "-p",
            str(shared_sandbox.ssh_port),
            "-i",
            str(shared_sandbox.key_file),
            "-o",
            f"UserKnownHostsFile={shared_sandbox.known_hosts}",
            "-o",
            "BatchMode=yes",
            f"root@{shared_sandbox.address}",
            "systemctl is-system-running",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.stdout.strip() == "running", run.stderr


def test_facts_task(shared_sandbox: Sandbox) -> None:
    run, _ = timed_inv("facts", "--config", str(shared_sandbox.config_file))
    assert run.returncode == 0, run.stderr
    assert f"root@127.0.0.1:{shared_sandbox.ssh_port}: Debian GNU/Linux 12 (bookworm) (x86_64)" in run.stdout


def test_wrong_key_is_one_line_within_15s(shared_sandbox: Sandbox, tmp_path: Path) -> None:
    other_key, _ = generate_key(tmp_path / "other")
    config = variant(shared_sandbox, tmp_path, **{str(shared_sandbox.key_file): str(other_key)})
    run, elapsed = timed_inv("facts", "--config", str(config))
    assert run.returncode == 3
    assert run.stderr.strip() == (
        f"error: root@127.0.0.1:{shared_sandbox.ssh_port}: SSH key refused for user root: "
        "check hosts.key and the host's authorized_keys"
    )
    assert elapsed < 15


def test_closed_port_is_one_line_within_15s(shared_sandbox: Sandbox, tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    config = variant(shared_sandbox, tmp_path, **{f"port = {shared_sandbox.ssh_port}": f"port = {port}"})
    run, elapsed = timed_inv("facts", "--config", str(config))
    assert run.returncode == 3
    assert run.stderr.strip() == (
        f"error: root@127.0.0.1:{port}: connection refused: is sshd running and port {port} open in the security group?"
    )
    assert elapsed < 15


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word, like a half-dead host."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


def test_silent_port_is_one_line_within_15s(shared_sandbox: Sandbox, tmp_path: Path, silent_port: int) -> None:
    config = variant(shared_sandbox, tmp_path, **{f"port = {shared_sandbox.ssh_port}": f"port = {silent_port}"})
    run, elapsed = timed_inv("facts", "--config", str(config))
    assert run.returncode == 3
    assert len(run.stderr.strip().splitlines()) == 1
    assert f"port {silent_port} took the connection but no SSH server answered within 10s" in run.stderr
    assert elapsed < 15


def test_changed_host_key_is_refused(shared_sandbox: Sandbox, tmp_path: Path) -> None:
    _, impostor_public = generate_key(tmp_path / "impostor")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{shared_sandbox.ssh_port} {impostor_public}")
    config = variant(shared_sandbox, tmp_path, **{str(shared_sandbox.known_hosts): str(known_hosts)})
    run, _ = timed_inv("facts", "--config", str(config))
    assert run.returncode == 3
    assert "host key mismatch (ssh-ed25519): the host was rebuilt or this is not it" in run.stderr
    assert str(known_hosts) in run.stderr


def test_unknown_host_key_is_recorded_on_first_use(shared_sandbox: Sandbox, tmp_path: Path) -> None:
    known_hosts = tmp_path / "fresh_known_hosts"
    config = variant(shared_sandbox, tmp_path, **{str(shared_sandbox.known_hosts): str(known_hosts)})
    run, _ = timed_inv("facts", "--config", str(config))
    assert run.returncode == 0, run.stderr
    recorded = known_hosts.read_text().split()
    expected = shared_sandbox.known_hosts.read_text().split()
    assert recorded[:3] == expected[:3] == [f"[127.0.0.1]:{shared_sandbox.ssh_port}", "ssh-ed25519", expected[2]]


def add_user(root: RemoteHost, user: str, public_key: str, sudo_rule: str | None) -> None:
    commands = [
        f"id {sh(user)} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash {sh(user)}",
        f"install -d -m 700 -o {sh(user)} -g {sh(user)} /home/{user}/.ssh",
        f"printf '%s' {sh(public_key)} > /home/{user}/.ssh/authorized_keys",
        f"chown {sh(user)}: /home/{user}/.ssh/authorized_keys",
        f"echo {sh(user + ':a-password-nobody-types')} | chpasswd",
    ]
    if sudo_rule:
        commands.append(f"echo {sh(user + ' ' + sudo_rule)} > /etc/sudoers.d/{user} && chmod 440 /etc/sudoers.d/{user}")
    result = root.run(" && ".join(commands))
    assert result.exit_code == 0, result.stderr


def test_user_whose_sudo_wants_a_password_is_refused(
    shared_sandbox: Sandbox, sandbox_host: RemoteHost, tmp_path: Path
) -> None:
    key, public = generate_key(tmp_path / "pw")
    add_user(sandbox_host, "needspw", public, "ALL=(ALL:ALL) ALL")
    host = sandbox_host.host.model_copy(update={"user": "needspw"})
    started = time.monotonic()
    with pytest.raises(SshError) as caught:
        connect(host, key, shared_sandbox.known_hosts)
    assert str(caught.value).startswith(
        f"needspw@127.0.0.1:{shared_sandbox.ssh_port}: user needspw needs passwordless sudo (sudo said: sudo: "
    )
    assert time.monotonic() - started < 15


def test_sudo_user_writes_root_owned_files(shared_sandbox: Sandbox, sandbox_host: RemoteHost, tmp_path: Path) -> None:
    key, public = generate_key(tmp_path / "deploy")
    add_user(sandbox_host, "deployer", public, "ALL=(ALL:ALL) NOPASSWD: ALL")
    host = sandbox_host.host.model_copy(update={"user": "deployer"})
    with connect(host, key, shared_sandbox.known_hosts) as remote:
        written = remote.upload("/etc/deployer-test.conf", b"via sudo\n", 0o640, "root", "adm")
        assert written.exit_code == 0, written.stderr
    check = sandbox_host.run("stat -c '%a %U %G' /etc/deployer-test.conf && cat /etc/deployer-test.conf")
    assert check.stdout == "640 root adm\nvia sudo\n"
    leftovers = sandbox_host.run("ls -A /tmp | grep -c appliance-upload || true").stdout.strip()
    assert leftovers == "0"


def test_ssh_client_is_available() -> None:
    assert shutil.which("ssh"), "openssh-client is installed by scripts/dev-prereqs.sh"
