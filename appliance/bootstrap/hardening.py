"""Host hardening beyond access control: what audits such as lynis rightly ask of a server."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from appliance.bootstrap.system import service_running
from appliance.facts import HostFacts
from appliance.render import render_host_template
from appliance.shell import sh
from appliance.steps import Action, Converge, Directory, Facts, ManagedFile, Packages, Run, Step

HARDENING_PACKAGES = (
    "libpam-tmpdir",  # a private TMPDIR per login session
    "libpam-pwquality",  # strength rules for the passwords that do exist (sudo, console)
    "needrestart",  # lists daemons on stale libraries; never restarts them (see needrestart.conf.j2)
    "debsums",  # verifies installed files against the packages' checksums
    "apt-show-versions",
    "sysstat",  # performance history for post-mortems
    "acct",  # process accounting
    "apt-listchanges",  # shows what an upgrade changes before it happens
    "chkrootkit",  # a local rootkit scanner (no network, unlike rkhunter's updates)
)

# Compilers on a production host are for an attacker, not for us: root only.
COMPILERS = ("as", "cc", "gcc", "c++", "g++", "clang", "ld")

# login.defs keys: new files private to their group, passwords aged and expensively hashed.
LOGIN_DEFS = {
    "UMASK": "027",
    "PASS_MIN_DAYS": "1",
    "PASS_MAX_DAYS": "365",
    "SHA_CRYPT_MIN_ROUNDS": "5000",
    "SHA_CRYPT_MAX_ROUNDS": "100000",
}

# Kernel modules a cloud server never needs: removable storage, and rarely used network protocols
# whose bugs have given local root.
BLACKLISTED_MODULES = ("usb-storage", "firewire-core", "dccp", "sctp", "rds", "tipc")

# Files only root needs to read.
PRIVATE_PATHS = {
    "/etc/crontab": 0o600,
    "/etc/ssh/sshd_config": 0o600,
    "/etc/cron.d": 0o700,
    "/etc/cron.daily": 0o700,
    "/etc/cron.hourly": 0o700,
    "/etc/cron.weekly": 0o700,
    "/etc/cron.monthly": 0o700,
}


@dataclass(frozen=True)
class KeyValueLines:
    """`KEY VALUE` lines in a file the distribution owns: each key set once, other lines left alone."""

    path: str
    values: Mapping[str, str]

    @property
    def name(self) -> str:
        return f"settings in {self.path}"

    def probes(self) -> Mapping[str, str]:
        keys = "|".join(self.values)
        return {"lines": f"grep -E '^[[:space:]]*({keys})[[:space:]]' {sh(self.path)}"}

    def plan(self, facts: Facts) -> list[Action]:
        have: dict[str, list[str]] = {}
        for line in facts["lines"].stdout.splitlines():
            key, *rest = line.split(None, 1)
            have.setdefault(key, []).append(" ".join(rest).strip())
        actions: list[Action] = []
        for key, value in self.values.items():
            if have.get(key) == [value]:
                continue
            # Drop every line for the key (commented ones stay), then append the one wanted.
            drop = sh("sed", "-i", "-E", f"/^[[:space:]]*{key}[[:space:]]/d", self.path)
            edit = f"{drop} && echo {sh(f'{key} {value}')} >> {sh(self.path)}"
            actions.append(Run(edit, f"{key} {value}"))
        return actions


def private_modes() -> list[Step]:
    return [
        Converge(
            f"mode {mode:o} on {path}",
            check=f'test ! -e {sh(path)} || [ "$(stat -c %a {sh(path)})" = {mode:o} ]',
            fix=sh("chmod", f"{mode:o}", path),
            why=f"make {path} readable by root only",
        )
        for path, mode in PRIVATE_PATHS.items()
    ]


def compilers_root_only() -> Converge:
    resolved = " ".join(f'"$(readlink -f "$(command -v {name})")"' for name in COMPILERS)
    found = f'for path in {resolved}; do [ -f "$path" ] && echo "$path"; done'
    return Converge(
        "compilers for root only",
        check=f"! ({found}) | xargs -r stat -c %a | grep -v '0$' >/dev/null",
        fix=f"({found}) | xargs -r chmod o-rwx",
        why="take compilers away from users other than root and their group",
    )


def audit_daemon(facts: HostFacts) -> list[Step]:
    """auditd where the host has its own kernel (a container cannot run it: the audit system is the VM's)."""
    if facts.container:
        return []
    return [Packages("audit", ("auditd",)), service_running("auditd")]


def hardening_steps(facts: HostFacts) -> list[Step]:
    """Packages, login policy, banners, module blacklist and file modes, in that order."""
    banner = render_host_template("banner.j2")
    return [
        Packages("hardening", HARDENING_PACKAGES),
        KeyValueLines("/etc/login.defs", LOGIN_DEFS),
        ManagedFile("/etc/issue", banner),
        ManagedFile("/etc/issue.net", banner),
        ManagedFile(
            "/etc/modprobe.d/60-appliance-blacklist.conf",
            render_host_template("module-blacklist.conf.j2", modules=BLACKLISTED_MODULES),
        ),
        ManagedFile("/etc/default/sysstat", b'ENABLED="true"\n'),
        service_running("sysstat"),
        service_running("acct"),
        *audit_daemon(facts),
        Directory("/etc/sudoers.d", 0o750),
        *private_modes(),
        compilers_root_only(),
    ]
