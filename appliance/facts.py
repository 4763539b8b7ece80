"""What a host is: read-only probes and the pure parsing of what they print."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from appliance.executor import read_facts
from appliance.remote import RemoteHost
from appliance.shell import sh
from appliance.steps import Fact


def fact_probes(base_dir: str) -> dict[str, str]:
    """Read-only commands whose output makes HostFacts; free space is measured where base_dir will live."""
    nearest = f'd={sh(base_dir)}; while [ ! -e "$d" ]; do d=$(dirname "$d"); done; df -Pk "$d"'
    return {
        "os_release": "cat /etc/os-release",
        "arch": "uname -m",
        "meminfo": "cat /proc/meminfo",
        "disk": nearest,
        "cpus": "nproc",
        "docker": "docker version --format '{{.Server.Version}}'",
        "compose_v2": "docker compose version --short",
        "compose_v1": "docker-compose version --short",
        "systemd": "cat /proc/1/comm",
        "container": "systemd-detect-virt --container",
        "swap": "swapon --show=SIZE --bytes --noheadings",
        "kex": "ssh -Q kex",
        "cipher": "ssh -Q cipher",
        "mac": "ssh -Q mac",
        "sshd_ports": "sshd -T | awk '$1 == \"port\" {print $2}'",
    }


@dataclass(frozen=True)
class HostFacts:
    """The facts every task decides from."""

    os_id: str
    os_version: str
    os_codename: str
    os_name: str
    arch: str
    memory_mb: int
    disk_free_mb: int
    cpus: int
    docker: str | None
    compose: str | None
    systemd: bool
    container: bool
    swap_mb: int
    # The ports sshd listens on inside the host; the operator may reach it through another (NAT, forward).
    sshd_ports: tuple[int, ...] = (22,)
    ssh_algorithms: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def summary(self) -> str:
        compose = f"Compose {self.compose}" if self.compose else "no Compose"
        docker = f"Docker {self.docker}" if self.docker else "no Docker"
        return (
            f"{self.os_name} ({self.arch}), {self.cpus} CPU, {self.memory_mb} MB RAM, "
            f"{self.disk_free_mb} MB free for the appliance, {docker}, {compose}"
        )


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value pairs of /etc/os-release, quotes removed."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip().strip('"') for key, value in pairs}


def parse_facts(facts: Mapping[str, Fact]) -> HostFacts:
    """HostFacts from the output of fact_probes()."""
    release = parse_os_release(facts["os_release"].stdout)
    meminfo = dict(line.split(":", 1) for line in facts["meminfo"].stdout.splitlines() if ":" in line)
    memory_kb = int(meminfo.get("MemTotal", "0 kB").split()[0])
    disk_lines = facts["disk"].stdout.splitlines()
    free_kb = int(disk_lines[-1].split()[3]) if len(disk_lines) > 1 else 0
    # The plugin first; the major version says which Compose it is, not the binary's name: Debian 13's
    # /usr/bin/docker-compose is the v2 plugin, and answers even while the docker CLI is missing.
    versions = [facts[probe].stdout.strip() for probe in ("compose_v2", "compose_v1") if facts[probe].ok]
    compose = next((f"v{version.split('.', 1)[0]} {version}" for version in versions if version), None)
    swap_bytes = sum(int(size) for size in facts["swap"].stdout.split() if size.isdigit())
    return HostFacts(
        os_id=release.get("ID", "unknown"),
        os_version=release.get("VERSION_ID", "unknown"),
        os_codename=release.get("VERSION_CODENAME", ""),
        os_name=release.get("PRETTY_NAME", "unknown OS"),
        arch=facts["arch"].stdout.strip(),
        memory_mb=memory_kb // 1024,
        disk_free_mb=free_kb // 1024,
        cpus=int(facts["cpus"].stdout.strip() or 0),
        docker=facts["docker"].stdout.strip() if facts["docker"].ok else None,
        compose=compose,
        systemd=facts["systemd"].stdout.strip() == "systemd",
        # systemd-detect-virt prints "none" and exits 1 on a VM or bare metal.
        container=facts["container"].ok and facts["container"].stdout.strip() not in ("", "none"),
        swap_mb=swap_bytes // (1024 * 1024),
        ssh_algorithms={kind: frozenset(facts[kind].stdout.split()) for kind in ("kex", "cipher", "mac")},
        sshd_ports=tuple(int(port) for port in facts["sshd_ports"].stdout.split() if port.isdigit()) or (22,),
    )


def gather_facts(remote: RemoteHost, base_dir: str) -> HostFacts:
    """Read the host's facts in one round trip."""
    return parse_facts(read_facts(remote, fact_probes(base_dir)))
