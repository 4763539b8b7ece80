"""Operating-system steps: packages, security updates, time, swap, kernel settings, logs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from appliance.config import Settings
from appliance.facts import HostFacts
from appliance.render import render_host_template
from appliance.shell import sh
from appliance.steps import (
    Action,
    ConfigFiles,
    Converge,
    Facts,
    ManagedFile,
    Note,
    Packages,
    Run,
    Step,
    apt_get,
)

SYSCTL_FILE = "/etc/sysctl.d/60-appliance.conf"

# A busy web/database host: deep accept queues, Redis's overcommit, many files; plus the kernel
# hardening that costs nothing. ip_forward stays as Docker sets it.
SYSCTL_DEFAULTS: Mapping[str, int | str] = {
    "net.core.somaxconn": 4096,
    "net.ipv4.tcp_max_syn_backlog": 4096,
    "net.ipv4.tcp_syncookies": 1,
    "vm.overcommit_memory": 1,
    "vm.swappiness": 10,
    "fs.file-max": 1048576,
    "fs.protected_hardlinks": 1,
    "fs.protected_symlinks": 1,
    "fs.protected_fifos": 2,
    "fs.protected_regular": 2,
    "fs.suid_dumpable": 0,
    "dev.tty.ldisc_autoload": 0,
    "kernel.core_uses_pid": 1,
    "kernel.ctrl-alt-del": 0,
    "kernel.kptr_restrict": 2,
    "kernel.dmesg_restrict": 1,
    "kernel.perf_event_paranoid": 3,
    "kernel.sysrq": 0,
    "kernel.unprivileged_bpf_disabled": 1,
    "net.core.bpf_jit_harden": 2,
    "net.ipv4.conf.all.accept_redirects": 0,
    "net.ipv4.conf.default.accept_redirects": 0,
    "net.ipv4.conf.all.send_redirects": 0,
    "net.ipv4.conf.default.send_redirects": 0,
    "net.ipv4.conf.all.accept_source_route": 0,
    "net.ipv4.conf.default.accept_source_route": 0,
    "net.ipv4.conf.all.rp_filter": 1,
    "net.ipv4.conf.all.log_martians": 1,
    "net.ipv4.conf.default.log_martians": 1,
    "net.ipv6.conf.all.accept_redirects": 0,
    "net.ipv6.conf.default.accept_redirects": 0,
}

BASE_PACKAGES = (
    "ca-certificates",
    "curl",
    "gnupg",
    "openssl",
    "tzdata",
    "cron",
    "logrotate",
    "iptables",
    "ufw",
    "sudo",
    "unattended-upgrades",
    "python3",
)


def base_packages(settings: Settings, facts: HostFacts) -> Packages:
    extra = []
    if settings.host.ntp_servers and not facts.container:
        extra.append("chrony")
    if settings.host.fail2ban:
        extra += ["fail2ban", "python3-systemd"]
    return Packages("base", (*BASE_PACKAGES, *extra))


def security_updates() -> Converge:
    """Pending security updates applied once through unattended-upgrade (which honours its blacklist)."""
    # No `grep -q` under pipefail: it exits at the first match and the writer's SIGPIPE flips the status.
    pending = "apt-get -s -o Debug::NoLocking=1 dist-upgrade 2>/dev/null | grep '^Inst' | grep -i security >/dev/null"
    return Converge(
        "security updates",
        check=f"! {pending}",
        fix=f"{apt_get('update')} && unattended-upgrade",
        why="apply pending security updates",
    )


def timezone(zone: str) -> Converge:
    path = f"/usr/share/zoneinfo/{zone}"
    return Converge(
        f"time zone {zone}",
        check=(
            f'[ "$(readlink -f /etc/localtime)" = {sh(path)} ] && [ "$(cat /etc/timezone 2>/dev/null)" = {sh(zone)} ]'
        ),
        fix=(
            f"test -e {sh(path)} || {{ echo 'unknown time zone {zone}' >&2; exit 1; }}; "
            f"ln -sfn {sh(path)} /etc/localtime && echo {sh(zone)} > /etc/timezone"
        ),
        why=f"set the time zone to {zone}",
    )


def service_running(unit: str) -> Converge:
    """A systemd unit enabled at boot and running now."""
    return Converge(
        f"service {unit}",
        check=f"systemctl is-enabled --quiet {sh(unit)} && systemctl is-active --quiet {sh(unit)}",
        fix=f"systemctl enable --now {sh(unit)}",
        why=f"enable and start {unit}",
    )


def time_sync(settings: Settings, facts: HostFacts) -> list[Step]:
    servers = settings.host.ntp_servers
    if not servers:
        return []
    if facts.container:
        return [Noted("time sync", "a container host keeps the clock of the machine it runs on")]
    conf = ManagedFile("/etc/chrony/chrony.conf", render_host_template("chrony.conf.j2", servers=servers))
    return [
        ConfigFiles("chrony servers", (conf,), "systemctl restart chrony", "restart chrony"),
        service_running("chrony"),
    ]


@dataclass(frozen=True)
class Noted:
    """A step that is deliberately not applied on this host, with the reason."""

    name: str
    why: str

    def probes(self) -> Mapping[str, str]:
        return {}

    def plan(self, facts: Facts) -> list[Action]:
        return [Note(self.why)]


def swap_size_mb(setting: str | int, facts: HostFacts) -> int:
    """The swap file a host should have: 'auto' gives hosts under 8 GB as much swap as memory, up to 4 GB,
    so that two copies of the API fit during a deploy; hosts that already swap keep what they have."""
    if setting == "off" or facts.swap_mb > 0:
        return 0
    if isinstance(setting, int):
        return setting
    return min(facts.memory_mb, 4096) if facts.memory_mb < 8192 else 0


def swap(settings: Settings, facts: HostFacts) -> list[Step]:
    size = swap_size_mb(settings.host.swap, facts)
    if size == 0:
        return []
    if facts.container:
        return [Noted("swap", "a container host cannot switch on swap; its machine's memory is what it has")]
    make = (
        f"fallocate -l {size}M /swapfile && chmod 600 /swapfile && mkswap /swapfile && swapon /swapfile && "
        "(grep -q '^/swapfile ' /etc/fstab || echo '/swapfile none swap sw 0 0' >> /etc/fstab)"
    )
    return [
        Converge(
            f"swap file {size} MB", "swapon --show=NAME --noheadings | grep . >/dev/null", make, f"add {size} MB swap"
        )
    ]


@dataclass(frozen=True)
class KernelSettings:
    """sysctl values in a drop-in file, applied to the running kernel when a value differs."""

    values: Mapping[str, int | str]
    container: bool

    @property
    def name(self) -> str:
        return "kernel settings"

    def content(self) -> bytes:
        return render_host_template("sysctl.conf.j2", settings=dict(self.values))

    def written_files(self) -> tuple[ManagedFile, ...]:
        return (ManagedFile(SYSCTL_FILE, self.content()),)

    def probes(self) -> Mapping[str, str]:
        return {
            **ManagedFile(SYSCTL_FILE, self.content()).probes(),
            "values": sh("sysctl", "-e", *self.values),
        }

    def plan(self, facts: Facts) -> list[Action]:
        actions = ManagedFile(SYSCTL_FILE, self.content()).plan(facts)
        pairs = (line.split("=", 1) for line in facts["values"].stdout.splitlines() if "=" in line)
        live = {key.strip(): " ".join(value.split()) for key, value in pairs}
        # A key this kernel does not have is skipped (sysctl -e), not a failure.
        differ = [key for key, value in self.values.items() if key in live and live[key] != str(value)]
        if differ and self.container:
            return [*actions, Note("a container host shares its machine's kernel: the values apply there")]
        if differ:
            actions.append(Run(sh("sysctl", "-e", "-q", "-p", SYSCTL_FILE), f"apply {len(differ)} kernel setting(s)"))
        return actions


def kernel_settings(settings: Settings, facts: HostFacts) -> KernelSettings:
    return KernelSettings({**SYSCTL_DEFAULTS, **settings.host.sysctl}, facts.container)


def automatic_upgrades(settings: Settings, facts: HostFacts) -> list[Step]:
    if facts.os_id == "ubuntu":
        origins = ["origin=Ubuntu,archive=${distro_codename}-security"]
    else:
        origins = ["origin=Debian,codename=${distro_codename}-security,label=Debian-Security"]
    files = [
        ManagedFile(
            "/etc/apt/apt.conf.d/52appliance-unattended-upgrades",
            render_host_template("unattended-upgrades.conf.j2", origins=origins),
        ),
        ManagedFile("/etc/needrestart/conf.d/appliance.conf", render_host_template("needrestart.conf.j2")),
    ]
    if settings.host.unattended_upgrades:
        files.append(ManagedFile("/etc/apt/apt.conf.d/20auto-upgrades", render_host_template("auto-upgrades.conf.j2")))
    steps: list[Step] = [*files]
    if not settings.host.unattended_upgrades:
        steps.append(
            Converge(
                "automatic upgrades off",
                "! test -e /etc/apt/apt.conf.d/20auto-upgrades",
                "rm -f /etc/apt/apt.conf.d/20auto-upgrades",
                "switch automatic upgrades off",
            )
        )
    return steps


def host_logs(settings: Settings) -> list[Step]:
    journald = ManagedFile(
        "/etc/systemd/journald.conf.d/50-appliance.conf",
        render_host_template("journald.conf.j2", max_use=settings.host.journald_max_use),
    )
    return [
        ConfigFiles("journald size cap", (journald,), "systemctl restart systemd-journald", "restart journald"),
        ManagedFile(f"/etc/logrotate.d/{settings.name}", render_host_template("logrotate.conf.j2", name=settings.name)),
    ]


def system_steps(settings: Settings, facts: HostFacts) -> list[Step]:
    """The operating-system part of bootstrap, in order."""
    return [
        base_packages(settings, facts),
        security_updates(),
        *automatic_upgrades(settings, facts),
        timezone(settings.timezone),
        *time_sync(settings, facts),
        *swap(settings, facts),
        kernel_settings(settings, facts),
        # Many open files for the stack; no core dumps (they can hold secrets from memory).
        ManagedFile(
            "/etc/security/limits.d/60-appliance.conf",
            b"* soft nofile 65536\n* hard nofile 65536\n* hard core 0\n",
        ),
        *host_logs(settings),
    ]
