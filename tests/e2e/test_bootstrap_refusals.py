"""Bad input stops bootstrap with one line before anything on the host changes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bootstrap.preflight import USE_INSTEAD
from appliance.config import load_config
from appliance.remote import RemoteHost, open_host
from appliance.sandbox import Sandbox, generate_key
from tests.conftest import SandboxFactory, inv

pytestmark = pytest.mark.e2e

# What a first bootstrap would create: none of it may exist after a refusal.
UNTOUCHED = (
    "test ! -e /opt/appliance && test ! -e /etc/ssh/sshd_config.d/00-appliance-hardening.conf && ! command -v ufw"
)


@pytest.fixture(scope="module")
def refusing(module_sandbox_factory: SandboxFactory) -> Sandbox:
    return module_sandbox_factory("refuse")


@pytest.fixture()
def root(refusing: Sandbox) -> Iterator[RemoteHost]:
    with open_host(load_config(refusing.config_file)) as remote:
        yield remote


def refused(config: Path) -> str:
    started = time.monotonic()
    run = inv("bootstrap", "--config", str(config))
    assert run.returncode != 0
    assert time.monotonic() - started < 30
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


def test_unknown_os(refusing: Sandbox, root: RemoteHost) -> None:
    root.run(
        "cp /etc/os-release /root/os-release.real && "
        "printf 'ID=arch\\nVERSION_ID=rolling\\nPRETTY_NAME=\"Arch Linux\"\\n' > /etc/os-release"
    )
    try:
        line = refused(refusing.config_file)
    finally:
        root.run("cp /root/os-release.real /etc/os-release")
    assert f"preflight: unsupported OS 'Arch Linux' (arch rolling): {USE_INSTEAD}" in line
    assert line.endswith("nothing was changed")
    assert root.run(UNTOUCHED).exit_code == 0


def test_full_disk(refusing: Sandbox, root: RemoteHost) -> None:
    # The appliance lives under /opt: a 2 MB filesystem there, filled, is a full disk where it matters.
    assert root.run("mount -t tmpfs -o size=2m tmpfs /opt && fallocate -l 1900k /opt/filler").exit_code == 0
    try:
        line = refused(refusing.config_file)
    finally:
        root.run("umount /opt")
    assert "preflight: only 0 MB free where the appliance lives, needs 4096 MB (host.min_disk_mb)" in line
    assert root.run(UNTOUCHED).exit_code == 0


def test_wrong_key(refusing: Sandbox, root: RemoteHost, tmp_path: Path) -> None:
    other, _ = generate_key(tmp_path / "other")
    config = tmp_path / "wrong-key.toml"
    config.write_text(refusing.config_file.read_text().replace(str(refusing.key_file), str(other)))
    assert "SSH key refused for user root" in refused(config)
    assert root.run(UNTOUCHED).exit_code == 0


def test_sudo_that_wants_a_password(refusing: Sandbox, root: RemoteHost, tmp_path: Path) -> None:
    key, public = generate_key(tmp_path / "ops")
    root.run(
        "useradd --create-home ops && install -d -m 700 -o ops -g ops /home/ops/.ssh && "
        f"echo '{public.strip()}' > /home/ops/.ssh/authorized_keys && chown ops: /home/ops/.ssh/authorized_keys && "
        "echo 'ops ALL=(ALL:ALL) ALL' > /etc/sudoers.d/ops && chmod 440 /etc/sudoers.d/ops"
    )
    config = tmp_path / "ops.toml"
    text = refusing.config_file.read_text().replace('user = "root"', 'user = "ops"')
    config.write_text(text.replace(str(refusing.key_file), str(key)))
    assert "user ops needs passwordless sudo" in refused(config)
    assert root.run(UNTOUCHED).exit_code == 0
