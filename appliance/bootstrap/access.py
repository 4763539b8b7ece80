"""Who gets in and how: the operator account, sshd hardening, the firewall, fail2ban.

sshd and the firewall are the two changes that can lock the operator out, so both end with a
VerifyLogin: a brand-new SSH session must work before bootstrap goes on, or the change is undone
over the session that is still open.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from appliance.bootstrap.host_registry import forwarded_address
from appliance.bootstrap.system import service_running
from appliance.config import Settings
from appliance.facts import HostFacts
from appliance.render import render_host_template
from appliance.shell import sh
from appliance.steps import (
    Action,
    ConfigFiles,
    Converge,
    Directory,
    Facts,
    ManagedFile,
    Run,
    Step,
    Upload,
    VerifyLogin,
)

SSHD_DROP_IN = "/etc/ssh/sshd_config.d/00-appliance-hardening.conf"

# Strongest first. Post-quantum hybrids lead where the host has them (OpenSSH 9.9+ knows ML-KEM, 10.0 prefers
# it), but classic curve25519 stays: recent Paramiko (under Fabric) speaks mlkem768x25519-sha256, older releases
# speak no post-quantum exchange and would be locked out.
KEX = (
    "mlkem768x25519-sha256",
    "sntrup761x25519-sha512@openssh.com",
    "sntrup761x25519-sha512",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group-exchange-sha256",
)
CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
MACS = ("hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com", "umac-128-etm@openssh.com")
HOST_KEY_ALGORITHMS = ("ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256")
# What every Paramiko release fabric>=3.2 allows can use of the above; the hardened list must keep one of them.
PARAMIKO_KEX = {
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group-exchange-sha256",
}


def supported(preferred: Sequence[str], available: frozenset[str]) -> list[str]:
    """The preferred algorithms this host's OpenSSH knows (an unknown one makes sshd refuse to start)."""
    return [name for name in preferred if not available or name in available]


def sshd_drop_in(facts: HostFacts, forward_to: str | None = None) -> bytes:
    """The hardening drop-in; `forward_to`: the one address local port forwarding may reach (else none)."""
    algorithms = facts.ssh_algorithms
    kex = supported(KEX, algorithms.get("kex", frozenset()))
    if not PARAMIKO_KEX & set(kex):
        kex.append("curve25519-sha256@libssh.org")
    return render_host_template(
        "sshd-hardening.conf.j2",
        kex=kex,
        ciphers=supported(CIPHERS, algorithms.get("cipher", frozenset())),
        macs=supported(MACS, algorithms.get("mac", frozenset())),
        host_key_algorithms=HOST_KEY_ALGORITHMS,
        forward_to=forward_to,
    )


@dataclass(frozen=True)
class SshdHardening:
    """The hardening drop-in, switched in only if `sshd -t` accepts it and a new login then works."""

    content: bytes
    path: str = SSHD_DROP_IN

    @property
    def name(self) -> str:
        return "sshd hardening"

    def written_files(self) -> tuple[ManagedFile, ...]:
        return (ManagedFile(self.path, self.content, 0o600),)

    def probes(self) -> Mapping[str, str]:
        return ManagedFile(self.path, self.content, 0o600).probes()

    def plan(self, facts: Facts) -> list[Action]:
        changes = ManagedFile(self.path, self.content, 0o600).plan(facts)
        if not changes:
            return []
        staging, previous = f"{self.path}.next", f"{self.path}.previous"
        restore = (
            f"if [ -e {sh(previous)} ]; then mv {sh(previous)} {sh(self.path)}; else rm -f {sh(self.path)}; fi; "
            "systemctl reload ssh"
        )
        switch = (
            f"if [ -e {sh(self.path)} ]; then cp -p {sh(self.path)} {sh(previous)}; else rm -f {sh(previous)}; fi; "
            f"mv {sh(staging)} {sh(self.path)}; ssh-keygen -A; "
            f'if ! out=$(/usr/sbin/sshd -t 2>&1); then {restore}; echo "sshd -t refused it: $out" >&2; exit 1; fi; '
            "systemctl reload ssh"
        )
        return [
            Upload(staging, self.content, 0o600, why="stage the hardened sshd settings"),
            Run(switch, "switch sshd to keys only and modern algorithms (checked by sshd -t)"),
            VerifyLogin(undo=restore, why="a new SSH login works with the hardened sshd"),
        ]


def weak_moduli_removed() -> Converge:
    """Group-exchange primes under 3072 bits out of /etc/ssh/moduli (ssh-audit fails on them)."""
    return Converge(
        "sshd moduli >= 3072 bits",
        check="awk '$1 !~ /^#/ && $5 + 0 < 3071 { weak = 1 } END { exit weak }' /etc/ssh/moduli",
        fix=(
            "awk '$1 ~ /^#/ || $5 + 0 >= 3071' /etc/ssh/moduli > /etc/ssh/moduli.next "
            "&& mv /etc/ssh/moduli.next /etc/ssh/moduli"
        ),
        why="drop Diffie-Hellman primes under 3072 bits",
    )


def ufw_rules(ssh_ports: Sequence[int], allow_from: Sequence[str]) -> list[str]:
    """The ufw rules wanted, as `ufw show added` prints them: SSH from the allowed networks, then web."""
    rules = []
    for port in ssh_ports:
        for cidr in allow_from:
            network = ipaddress.ip_network(cidr, strict=False)
            if network.prefixlen == 0:
                rules.append(f"allow {port}/tcp")
            else:
                rules.append(f"allow from {network} to any port {port} proto tcp")
    return [*dict.fromkeys(rules), "allow 80/tcp", "allow 443/tcp"]


@dataclass(frozen=True)
class Firewall:
    """ufw: deny incoming by default, allow exactly the wanted rules, on; checked by a new login."""

    rules: tuple[str, ...]

    @property
    def name(self) -> str:
        return "firewall (ufw)"

    def probes(self) -> Mapping[str, str]:
        return {"status": "ufw status verbose", "added": "ufw show added"}

    def plan(self, facts: Facts) -> list[Action]:
        have = [
            line.removeprefix("ufw ").strip() for line in facts["added"].stdout.splitlines() if line.startswith("ufw ")
        ]
        status = facts["status"].stdout
        actions: list[Action] = []
        # New rules before old ones go, so the SSH rule in use is never missing.
        actions += [Run(f"ufw {rule}", f"add rule: {rule}") for rule in self.rules if rule not in have]
        actions += [Run(f"ufw delete {rule}", f"remove rule: {rule}") for rule in have if rule not in self.rules]
        if "deny (incoming)" not in status:
            actions.append(Run("ufw default deny incoming", "deny incoming by default"))
        if "allow (outgoing)" not in status:
            actions.append(Run("ufw default allow outgoing", "allow outgoing by default"))
        if "Status: active" not in status:
            actions.append(Run("ufw --force enable", "switch the firewall on"))
        if actions:
            actions.append(VerifyLogin(undo="ufw --force disable", why="a new SSH login gets through the firewall"))
        return actions


def firewall(settings: Settings, facts: HostFacts) -> Firewall:
    return Firewall(tuple(ufw_rules(facts.sshd_ports, settings.host.ssh_allow_from)))


def fail2ban(settings: Settings, facts: HostFacts) -> list[Step]:
    if not settings.host.fail2ban:
        return []
    jail = ManagedFile(
        # jail.local, not jail.d: package updates never touch it, and audits look for it.
        "/etc/fail2ban/jail.local",
        render_host_template("fail2ban-jail.conf.j2", ssh_port=",".join(map(str, facts.sshd_ports))),
    )
    return [
        ConfigFiles("fail2ban sshd jail", (jail,), "systemctl restart fail2ban", "restart fail2ban"),
        service_running("fail2ban"),
    ]


def operator_account(settings: Settings, public_key: str | None) -> list[Step]:
    """The operator's own account: their key, the docker group, sudo for the appliance's commands only."""
    user = settings.host.operator_user
    if user is None or public_key is None:
        return []
    home = f"/home/{user}"
    return [
        Converge(
            f"user {user}",
            check=f"id -u {sh(user)}",
            fix=f"useradd --create-home --shell /bin/bash {sh(user)}",
            why=f"create {user}",
        ),
        Directory(f"{home}/.ssh", 0o700, user, user),
        ManagedFile(f"{home}/.ssh/authorized_keys", public_key.encode(), 0o600, user, user),
        ManagedFile(
            f"/etc/sudoers.d/{settings.name}-operator",
            render_host_template("operator-sudoers.j2", user=user, base_dir=settings.base_dir, name=settings.name),
            0o440,
        ),
    ]


def docker_group_member(user: str | None) -> list[Step]:
    if user is None:
        return []
    return [
        Converge(
            f"{user} in group docker",
            check=f"id -nG {sh(user)} | grep -w docker >/dev/null",
            fix=f"usermod -aG docker {sh(user)}",
            why=f"let {user} run docker",
        )
    ]


def access_steps(settings: Settings, facts: HostFacts, operator_key: str | None) -> list[Step]:
    """The access part of bootstrap, in order: account first, so hardening never strands it."""
    return [
        *operator_account(settings, operator_key),
        weak_moduli_removed(),
        SshdHardening(sshd_drop_in(facts, forwarded_address(settings))),
        firewall(settings, facts),
        *fail2ban(settings, facts),
    ]
