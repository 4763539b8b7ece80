"""Bootstrap's decisions for hosts the sandbox cannot be: small, old, restricted."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

import pytest

from appliance.bootstrap import ASSUMED_FACTS
from appliance.bootstrap.access import PARAMIKO_KEX, sshd_drop_in, ufw_rules
from appliance.bootstrap.docker_engine import DISTRIBUTION_DOCKER, compose_command, distribution_packages
from appliance.bootstrap.layout import host_scripts
from appliance.bootstrap.preflight import ACCEPTED_OS, EXERCISED_OS, OS_NAMES, REFUSED_OS, preflight_problems
from appliance.bootstrap.system import KernelSettings, swap_size_mb
from appliance.config import Host, HostSetup, Settings
from appliance.facts import fact_probes, parse_facts
from appliance.render import BUNDLE_ROOT
from appliance.steps import Fact, ManagedFile, Note, Run

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
    assert problems[0] == (
        "unsupported OS 'CentOS 7' (centos 7): reinstall the CVM with Ubuntu 24.04 or 22.04, or Debian 13 or 12"
    )
    assert "only 900 MB of memory, needs 1800 MB (host.min_memory_mb)" in problems[3]


def test_ubuntu_20_04_is_refused_in_one_line_that_says_what_to_use() -> None:
    focal = dataclasses.replace(ASSUMED_FACTS, os_id="ubuntu", os_version="20.04", os_name="Ubuntu 20.04.6 LTS")
    (problem,) = preflight_problems(HostSetup(), focal)
    assert problem.startswith("unsupported OS 'Ubuntu 20.04.6 LTS': its standard support ended")
    assert "Ubuntu 24.04 or 22.04" in problem
    assert "\n" not in problem


def test_tencentos_is_refused_whatever_its_version_and_told_what_to_use() -> None:
    for version in ("2.4", "3.1", "4"):
        host = dataclasses.replace(
            ASSUMED_FACTS, os_id="tencentos", os_version=version, os_name=f"TencentOS Server {version}"
        )
        (problem,) = preflight_problems(HostSetup(), host)
        assert problem.startswith(f"unsupported OS 'TencentOS Server {version}': an RPM system")
        assert problem.endswith(
            "reinstall the CVM with Ubuntu 24.04 or 22.04, or Debian 13 or 12 (Tencent Cloud's public images)"
        )


def test_debian_13_and_every_supported_release_pass_preflight() -> None:
    for os_id, version in EXERCISED_OS | ACCEPTED_OS:
        host = dataclasses.replace(ASSUMED_FACTS, os_id=os_id, os_version=version, os_name=f"{os_id} {version}")
        assert preflight_problems(HostSetup(), host) == []


def test_readme_os_table_is_the_preflight_table() -> None:
    readme = (BUNDLE_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Supported hosts", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    listed = {cells[0].strip(): cells[1].strip() for cells in rows[1:]}

    def named(releases: Iterable[tuple[str, str | None]]) -> set[str]:
        return {f"{OS_NAMES[name]} {version}" if version else OS_NAMES[name] for name, version in releases}

    def verdict(prefix: str) -> set[str]:
        return {os for os, text in listed.items() if text.startswith(prefix)}

    assert verdict("supported, exercised in CI") == named(EXERCISED_OS)
    assert verdict("supported, accepted") == named(ACCEPTED_OS)
    assert verdict("refused") == named(REFUSED_OS)
    assert len(listed) == len(EXERCISED_OS) + len(ACCEPTED_OS) + len(REFUSED_OS)


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


def test_openssh_10_leads_with_ml_kem_and_keeps_the_classic_fallback() -> None:
    # `ssh -Q` on Debian 13 (OpenSSH 10.0p2).
    trixie = dataclasses.replace(
        ASSUMED_FACTS,
        ssh_algorithms={
            "kex": frozenset(
                [
                    "diffie-hellman-group1-sha1",
                    "diffie-hellman-group14-sha1",
                    "diffie-hellman-group14-sha256",
                    "diffie-hellman-group16-sha512",
                    "diffie-hellman-group18-sha512",
                    "diffie-hellman-group-exchange-sha1",
                    "diffie-hellman-group-exchange-sha256",
                    "ecdh-sha2-nistp256",
                    "ecdh-sha2-nistp384",
                    "ecdh-sha2-nistp521",
                    "curve25519-sha256",
                    "curve25519-sha256@libssh.org",
                    "sntrup761x25519-sha512",
                    "sntrup761x25519-sha512@openssh.com",
                    "mlkem768x25519-sha256",
                ]
            ),
            "cipher": frozenset(
                [
                    "aes128-ctr",
                    "aes192-ctr",
                    "aes256-ctr",
                    "aes128-gcm@openssh.com",
                    "aes256-gcm@openssh.com",
                    "chacha20-poly1305@openssh.com",
                    "3des-cbc",
                ]
            ),
            "mac": frozenset(["hmac-sha1", "hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"]),
        },
    )
    lines = dict(line.split(" ", 1) for line in sshd_drop_in(trixie).decode().splitlines() if " " in line)
    kex = lines["KexAlgorithms"].split(",")
    assert kex[:3] == ["mlkem768x25519-sha256", "sntrup761x25519-sha512@openssh.com", "sntrup761x25519-sha512"]
    assert PARAMIKO_KEX & set(kex)
    assert "diffie-hellman-group14-sha1" not in kex and "3des-cbc" not in lines["Ciphers"]


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


def test_compose_v2_where_the_release_ships_it_and_one_command_for_the_host() -> None:
    assert set(DISTRIBUTION_DOCKER) == EXERCISED_OS | ACCEPTED_OS
    settings = Settings(hosts=[Host(address="203.0.113.7")])
    bookworm = dataclasses.replace(ASSUMED_FACTS, os_id="debian", os_version="12")
    trixie = dataclasses.replace(ASSUMED_FACTS, os_id="debian", os_version="13")
    assert distribution_packages(ASSUMED_FACTS) == ("docker.io", "docker-compose-v2")
    assert distribution_packages(bookworm) == ("docker.io", "docker-compose")
    assert distribution_packages(trixie) == ("docker.io", "docker-cli", "docker-compose")
    assert compose_command(settings, bookworm) == "docker-compose"
    assert compose_command(settings, trixie) == compose_command(settings, ASSUMED_FACTS) == "docker compose"
    docker_ce = settings.model_copy(update={"host": HostSetup(docker_source="docker-ce")})
    assert compose_command(docker_ce, bookworm) == "docker compose"
    # What Compose the host already has does not matter: bootstrap installs the release's.
    assert compose_command(settings, dataclasses.replace(trixie, compose="v1 1.29.2")) == "docker compose"
    wrapper = next(step for step in host_scripts(settings, trixie) if isinstance(step, ManagedFile))
    assert wrapper.path == "/opt/appliance/bin/compose"
    assert wrapper.content.decode().splitlines()[-1] == 'exec docker compose "$@"'


def test_compose_is_named_by_its_major_version_not_by_the_binary_that_answered() -> None:
    answers = {name: Fact("", 1) for name in fact_probes("/opt/appliance")}
    answers |= {"os_release": Fact('ID=debian\nVERSION_ID="13"\n', 0), "cpus": Fact("2\n", 0)}
    # Debian 13 before its docker CLI is in: only /usr/bin/docker-compose (the v2 plugin) answers.
    assert parse_facts(answers | {"compose_v1": Fact("2.26.1-4\n", 0)}).compose == "v2 2.26.1-4"
    assert parse_facts(answers | {"compose_v1": Fact("1.29.2\n", 0)}).compose == "v1 1.29.2"
    both = answers | {"compose_v2": Fact("2.26.1-4\n", 0), "compose_v1": Fact("1.29.2\n", 0)}
    assert parse_facts(both).compose == "v2 2.26.1-4"
    assert parse_facts(answers).compose is None
