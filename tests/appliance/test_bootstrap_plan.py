"""Bootstrap's decisions for hosts the sandbox cannot be: small, old, restricted."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from appliance.bootstrap import ASSUMED_FACTS
from appliance.bootstrap.access import PARAMIKO_KEX, sshd_drop_in, ufw_rules
from appliance.bootstrap.docker_engine import distribution_packages
from appliance.bootstrap.preflight import REFUSED_OS, SUPPORTED_OS, preflight_problems
from appliance.bootstrap.system import KernelSettings, swap_size_mb
from appliance.config import HostSetup
from appliance.render import BUNDLE_ROOT
from appliance.steps import Fact, Note, Run

pytestmark = pytest.mark.unit

SMALL = dataclasses.replace(ASSUMED_FACTS, memory_mb=3800)


def test_fit_host_has_no_problems_and_unfit_one_has_each_named() -> None:
    assert preflight_problems(HostSetup(), ASSUMED_FACTS) == []
    unfit = dataclasses.replace(
        ASSUMED_FACTS, os_id="centos", os_version="7", os_name="CentOS 7", arch="ppc64le", memory_mb=900,
        disk_free_mb=100, systemd=False,
    )  # fmt: skip
    problems = preflight_problems(HostSetup(), unfit)
    assert len(problems) == 5
    assert problems[0] == "unsupported OS 'CentOS 7' (centos 7): use Debian 12, Ubuntu 22.04, Ubuntu 24.04"
    assert "only 900 MB of memory, needs 1800 MB (host.min_memory_mb)" in problems[3]


def test_ubuntu_20_04_is_refused_in_one_line_that_says_what_to_use() -> None:
    focal = dataclasses.replace(ASSUMED_FACTS, os_id="ubuntu", os_version="20.04", os_name="Ubuntu 20.04.6 LTS")
    (problem,) = preflight_problems(HostSetup(), focal)
    assert problem.startswith("unsupported OS 'Ubuntu 20.04.6 LTS': its standard support ended")
    assert "Ubuntu 24.04 or 22.04" in problem
    assert "\n" not in problem


def test_readme_os_table_is_the_preflight_table() -> None:
    readme = (BUNDLE_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Supported hosts", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    listed = {cells[0].strip(): cells[1].strip() for cells in rows[1:]}
    supported = {f"{name.title()} {version}" for name, version in SUPPORTED_OS}
    refused = {f"{name.title()} {version}" for name, version in REFUSED_OS}
    assert {os for os, verdict in listed.items() if verdict.startswith("supported")} == supported
    assert {os for os, verdict in listed.items() if verdict.startswith("refused")} == refused


def test_swap_only_on_small_hosts_without_any() -> None:
    assert swap_size_mb("auto", SMALL) == 3800
    assert swap_size_mb("auto", dataclasses.replace(SMALL, memory_mb=7000)) == 4096
    assert swap_size_mb("auto", dataclasses.replace(SMALL, memory_mb=16000)) == 0
    assert swap_size_mb("auto", dataclasses.replace(SMALL, swap_mb=1024)) == 0
    assert swap_size_mb(2048, SMALL) == 2048
    assert swap_size_mb("off", SMALL) == 0


def test_ssh_rules_come_first_and_follow_the_allowed_networks() -> None:
    assert ufw_rules((22,), ["0.0.0.0/0"]) == ["allow 22/tcp", "allow 80/tcp", "allow 443/tcp"]
    assert ufw_rules((22, 2200), ["203.0.113.7", "198.51.100.0/24"]) == [
        "allow from 203.0.113.7/32 to any port 22 proto tcp",
        "allow from 198.51.100.0/24 to any port 22 proto tcp",
        "allow from 203.0.113.7/32 to any port 2200 proto tcp",
        "allow from 198.51.100.0/24 to any port 2200 proto tcp",
        "allow 80/tcp",
        "allow 443/tcp",
    ]


def test_sshd_lists_only_what_the_host_knows_and_keep_paramiko_in() -> None:
    # OpenSSH 8.2 (Ubuntu 20.04) knows no post-quantum exchange; an unknown name would stop sshd.
    old = dataclasses.replace(
        ASSUMED_FACTS,
        ssh_algorithms={
            "kex": frozenset({"curve25519-sha256", "curve25519-sha256@libssh.org", "diffie-hellman-group16-sha512"}),
            "cipher": frozenset({"aes256-gcm@openssh.com", "aes128-ctr"}),
            "mac": frozenset({"hmac-sha2-256-etm@openssh.com"}),
        },
    )
    text = sshd_drop_in(old).decode()
    kex = next(line for line in text.splitlines() if line.startswith("KexAlgorithms "))
    assert kex == "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org,diffie-hellman-group16-sha512"
    assert "Ciphers aes256-gcm@openssh.com,aes128-ctr\n" in text
    assert "PasswordAuthentication no\n" in text and "AuthenticationMethods publickey\n" in text
    assert "RequiredRSASize" not in text
    assert PARAMIKO_KEX & set(kex.split()[1].split(","))


def test_kernel_settings_apply_on_a_vm_and_only_note_in_a_container() -> None:
    values = {"vm.overcommit_memory": 1, "net.core.somaxconn": 4096}
    live = Fact("vm.overcommit_memory = 0\nnet.core.somaxconn = 4096\n", 0)
    file_ok = KernelSettings(values, container=False)
    facts = {"stat": Fact("regular file 644 root root", 0), "values": live}
    digest = hashlib.sha256(file_ok.content()).hexdigest()
    facts["sha256"] = Fact(f"{digest}  /etc/sysctl.d/60-appliance.conf", 0)
    [action] = file_ok.plan(facts)
    assert action == Run("sysctl -e -q -p /etc/sysctl.d/60-appliance.conf", "apply 1 kernel setting(s)")
    [note] = KernelSettings(values, container=True).plan(facts)
    assert isinstance(note, Note)


def test_compose_v2_where_the_release_ships_it() -> None:
    assert distribution_packages(ASSUMED_FACTS) == ("docker.io", "docker-compose-v2")
    debian = dataclasses.replace(ASSUMED_FACTS, os_id="debian", os_version="12")
    assert distribution_packages(debian) == ("docker.io", "docker-compose")
