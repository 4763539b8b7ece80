"""Docker engine and Compose, from the distribution or from Docker's packages through a mirror."""

from __future__ import annotations

import json

from appliance.bootstrap.system import service_running
from appliance.config import Settings
from appliance.facts import HostFacts
from appliance.render import render_host_template
from appliance.shell import sh
from appliance.steps import ConfigFiles, Converge, ManagedFile, Packages, Step

DOCKER_CE_PACKAGES = (
    "docker-ce",
    "docker-ce-cli",
    "containerd.io",
    "docker-compose-plugin",
    "docker-buildx-plugin",
)
WEB_PORTS = (80, 443)


COMPOSE_V2 = "docker compose"
COMPOSE_V1 = "docker-compose"
# Each release's Docker packages and the Compose command they give: Debian 12's docker-compose is v1 (1.29);
# Debian 13's is v2 (2.26, the CLI plugin), and its docker.io only recommends the CLI (docker-cli), which an
# install without recommends leaves out; Ubuntu ships v2 as docker-compose-v2.
DISTRIBUTION_DOCKER = {
    ("debian", "12"): (("docker.io", "docker-compose"), COMPOSE_V1),
    ("debian", "13"): (("docker.io", "docker-cli", "docker-compose"), COMPOSE_V2),
    ("ubuntu", "22.04"): (("docker.io", "docker-compose-v2"), COMPOSE_V2),
    ("ubuntu", "24.04"): (("docker.io", "docker-compose-v2"), COMPOSE_V2),
}


def distribution_packages(facts: HostFacts) -> tuple[str, ...]:
    """The release's own engine, CLI and Compose packages."""
    return DISTRIBUTION_DOCKER[(facts.os_id, facts.os_version)][0]


def compose_command(settings: Settings, facts: HostFacts) -> str:
    """The compose command on this host: the one the packages bootstrap installs provide (BASE/bin/compose runs it).

    Decided from the release and host.docker_source alone, so it is the same before Docker is installed and
    after, and every caller (deploy, rollback, the stack's unit, host scripts, backups) gets it from one place.
    """
    if settings.host.docker_source == "docker-ce":
        return COMPOSE_V2  # docker-compose-plugin
    return DISTRIBUTION_DOCKER[(facts.os_id, facts.os_version)][1]


def docker_ce_repository(settings: Settings, facts: HostFacts) -> Converge:
    """Docker's apt repository, through the configured mirror (mainland hosts cannot reach Docker's own)."""
    base = f"{settings.host.docker_ce_mirror.rstrip('/')}/linux/{facts.os_id}"
    keyring = "/etc/apt/keyrings/docker.asc"
    line = f"deb [signed-by={keyring}] {base} {facts.os_codename} stable"
    source = "/etc/apt/sources.list.d/docker.list"
    return Converge(
        "docker-ce repository",
        check=f"test -s {keyring} && grep -qxF {sh(line)} {source}",
        fix=(
            f"install -d -m 755 /etc/apt/keyrings && curl -fsSL --max-time 60 {sh(base + '/gpg')} -o {keyring} "
            f"&& chmod 644 {keyring} && echo {sh(line)} > {source}"
        ),
        why=f"add Docker's repository from {settings.host.docker_ce_mirror}",
    )


def daemon_json(settings: Settings) -> bytes:
    daemon = {
        "log-driver": "json-file",
        "log-opts": {"max-size": "10m", "max-file": "5"},
        # Containers keep running while dockerd restarts (an upgrade, a config change).
        "live-restore": True,
        "registry-mirrors": settings.host.registry_mirrors,
    }
    return render_host_template("docker-daemon.json.j2", daemon=json.loads(json.dumps(daemon)))


def docker_steps(settings: Settings, facts: HostFacts) -> list[Step]:
    """Engine, Compose, daemon.json, and the DOCKER-USER guard that keeps published ports closed."""
    steps: list[Step] = []
    if settings.host.docker_source == "docker-ce":
        steps += [docker_ce_repository(settings, facts), Packages("docker-ce", DOCKER_CE_PACKAGES)]
    else:
        steps.append(Packages("docker", distribution_packages(facts)))
    daemon = ManagedFile("/etc/docker/daemon.json", daemon_json(settings))
    guard_unit = ManagedFile(
        "/etc/systemd/system/docker-user-firewall.service",
        render_host_template("docker-user-firewall.service.j2", ports=WEB_PORTS, base_dir=settings.base_dir),
    )
    return [
        *steps,
        ConfigFiles("docker daemon.json", (daemon,), "systemctl restart docker", "restart docker"),
        service_running("docker"),
        ConfigFiles(
            "docker published-port guard",
            (guard_unit,),
            "systemctl daemon-reload && systemctl enable docker-user-firewall "
            "&& systemctl restart docker-user-firewall",
            "load and run the guard",
        ),
        service_running("docker-user-firewall"),
    ]
