"""The appliance's own place on the host: directories, host scripts, the boot unit, cron (TLS: tls.py)."""

from __future__ import annotations

import json

from appliance.backup.install import backup_steps
from appliance.bootstrap.docker_engine import compose_command
from appliance.bootstrap.tls import cert_expiry_command, tls_steps
from appliance.config import Config, Settings
from appliance.facts import HostFacts
from appliance.host_paths import HostPaths
from appliance.render import BUNDLE_ROOT, render_host_template, render_template
from appliance.shell import sh
from appliance.steps import ConfigFiles, Converge, Directory, ManagedFile, Step

# scripts/ files that run on the host, and their names in BASE/bin.
HOST_SCRIPTS = {
    "docker-user-firewall.sh": "docker-user-firewall.sh",
    "cert-expiry.sh": "cert-expiry.sh",
    "stack.sh": "stack.sh",
    "backup.sh": "backup.sh",
    "health-check.sh": "health-check.sh",
    "log-collection.sh": "log-collection.sh",
    "update.sh": "update.sh",
    "monitor.sh": "monitor.sh",
    "container-metrics.sh": "container-metrics.sh",
}


def directories(paths: HostPaths) -> list[Step]:
    return [
        Directory(paths.base, 0o755),
        Directory(paths.releases, 0o755),
        Directory(paths.bin, 0o755),
        Directory(paths.shared, 0o755),
        Directory(paths.certs, 0o750),
        Directory(paths.www, 0o755),
        Directory(paths.data, 0o750),
        Directory(paths.backups, 0o700),
        Directory(paths.metrics, 0o755),
    ]


def host_scripts(settings: Settings, facts: HostFacts) -> list[Step]:
    """The scripts in BASE/bin, and BASE/bin/compose: the host's compose command, which all of them call."""
    paths = settings.paths
    compose = render_host_template("compose.sh.j2", command=compose_command(settings, facts))
    return [
        ManagedFile(paths.compose, compose, 0o755),
        *(
            ManagedFile(paths.script(name), (BUNDLE_ROOT / "scripts" / source).read_bytes(), 0o755)
            for source, name in HOST_SCRIPTS.items()
        ),
    ]


def boot_unit(settings: Settings) -> list[Step]:
    unit = f"{settings.name}.service"
    content = render_template(
        "systemd/appliance.service.j2",
        {
            "header": "Managed by cvm-appliance (inv bootstrap).",
            "name": settings.name,
            "base_dir": settings.base_dir,
        },
    ).encode()
    return [
        ConfigFiles(
            f"unit {unit}",
            (ManagedFile(f"/etc/systemd/system/{unit}", content),),
            "systemctl daemon-reload",
            "reload systemd",
        ),
        Converge(
            f"{unit} enabled",
            f"systemctl is-enabled --quiet {unit}",
            f"systemctl enable {unit}",
            f"start {unit} at boot",
        ),
    ]


def cron_entries(settings: Settings, backs_up: bool = True) -> list[Step]:
    """The host's cron entries; `backs_up`: this host takes the scheduled backups (of several, the first)."""
    metrics = settings.paths.metrics
    containers = sh(settings.paths.script("container-metrics.sh"), settings.name, f"{metrics}/containers.prom")
    entries: list[Step] = [
        ManagedFile(
            f"/etc/cron.d/{settings.name}-cert-expiry",
            render_host_template("metric.cron.j2", schedule="17 */6 * * *", command=cert_expiry_command(settings)),
        ),
        ManagedFile(
            f"/etc/cron.d/{settings.name}-container-metrics",
            render_host_template("metric.cron.j2", schedule="* * * * *", command=containers),
        ),
    ]
    backup_cron = f"/etc/cron.d/{settings.name}-backup"
    if settings.backup.enabled and backs_up:
        content = render_template(
            "systemd/backup.cron.j2",
            {
                "header": "Managed by cvm-appliance (inv bootstrap).",
                "backup": settings.backup,
                "base_dir": settings.base_dir,
                "name": settings.name,
            },
        )
        entries.append(ManagedFile(backup_cron, content.encode()))
    else:
        entries.append(
            Converge(
                "backup cron off",
                f"! test -e {backup_cron}",
                f"rm -f {backup_cron}",
                "remove the backup cron entry",
            )
        )
    return entries


def host_record(settings: Settings, facts: HostFacts) -> ManagedFile:
    """What bootstrap found, for deploy and for the operator: OS, Docker, and which Compose."""
    record = {
        "os": f"{facts.os_id} {facts.os_version}",
        "arch": facts.arch,
        "docker": facts.docker,
        "compose": facts.compose,
        "compose_command": compose_command(settings, facts),
        "compose_wrapper": settings.paths.compose,
    }
    return ManagedFile(settings.paths.host_record, (json.dumps(record, indent=2) + "\n").encode())


def layout_steps(config: Config, facts: HostFacts) -> list[Step]:
    """The appliance's directories and host scripts (the Docker guard needs them first)."""
    return [*directories(config.settings.paths), *host_scripts(config.settings, facts)]


def service_steps(config: Config) -> list[Step]:
    """What needs Docker in place: TLS, the unit that starts the stack at boot, cron."""
    return [
        *tls_steps(config),
        *boot_unit(config.settings),
        *backup_steps(config),
        *cron_entries(config.settings, config.on_first_host),
    ]
