"""Remote steps as data: a step names the facts it reads, then decides the actions it needs.

Deciding is pure: `plan(facts)` gets what the probes printed and returns actions, so every decision is
tested without a host. An empty plan means the host already is as the step wants it ("ok"). The
executor (appliance/executor.py) is the only code that runs anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from appliance.errors import StepFailed
from appliance.shell import sh


@dataclass(frozen=True)
class Fact:
    """What a read-only probe command printed, and its exit status."""

    stdout: str
    exit_code: int

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class Run:
    """Run a shell command on the host as root."""

    command: str
    why: str


@dataclass(frozen=True)
class Note:
    """Nothing to do, for a reason worth showing (e.g. a setting a container host cannot apply)."""

    why: str


@dataclass(frozen=True)
class Upload:
    """Put a file on the host atomically with this content, mode and owner."""

    path: str
    content: bytes
    mode: int
    owner: str = "root"
    group: str = "root"
    why: str = ""


@dataclass(frozen=True)
class VerifyLogin:
    """Open a brand-new SSH session before going on; if that fails, run `undo` over the old one.

    A reloaded sshd takes a moment to listen again, so the login is tried `attempts` times, a second apart.
    """

    undo: str
    why: str = "a new SSH login still works"
    attempts: int = 5


class ByteSource(Protocol):
    """Bytes produced on the operator's side (e.g. a compressed `docker save`), read once."""

    @property
    def size(self) -> int:
        """Expected size in bytes before compression, for progress; 0 when unknown."""
        ...

    def chunks(self) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class Stream:
    """Run `command` on the host as root with `source`'s bytes on its standard input."""

    command: str
    source: ByteSource
    why: str


class TunnelEnd(Protocol):
    """The operator's end of a port forward to the host: a local port, the bytes sent through it so far, and
    whether the SSH connection under it is gone."""

    @property
    def port(self) -> int: ...

    @property
    def sent(self) -> int: ...

    @property
    def broken(self) -> bool: ...


class Transfer(Protocol):
    """Operator-side work through a `Forward`, e.g. a push into the host's own registry."""

    def send(self, tunnel: TunnelEnd) -> None:
        """Do the work through `tunnel`; raise ApplianceError with the reason when it fails."""
        ...

    def summary(self) -> str:
        """Its line in plans and summaries (after `send`: what travelled)."""
        ...


@dataclass(frozen=True)
class Forward:
    """Run `transfer` on the operator's side while a local port leads to the host's 127.0.0.1:`port` over SSH."""

    port: int
    transfer: Transfer


Action = Run | Upload | Stream | Forward | VerifyLogin | Note
Facts = Mapping[str, Fact]


class Step(Protocol):
    """A unit of desired host state."""

    @property
    def name(self) -> str: ...

    def probes(self) -> Mapping[str, str]:
        """Fact name → read-only shell command whose output the plan needs."""
        ...

    def plan(self, facts: Facts) -> list[Action]:
        """The actions that bring the host to the wanted state; [] when it already is."""
        ...


@runtime_checkable
class WritesFiles(Protocol):
    """A step that writes whole files says which: `inv render` shows them (bootstrap_files), so a new kind of
    file-writing step cannot drop out of it."""

    def written_files(self) -> tuple[ManagedFile, ...]:
        """The files as they land on the host (path, content, mode); () for one render must not show."""
        ...


def _stat_probe(path: str) -> str:
    return sh("stat", "-c", "%F %a %U %G", path)


def _stat_fields(fact: Fact) -> tuple[str, str, str, str] | None:
    """(kind, mode, owner, group) from a `stat -c '%F %a %U %G'` fact, None when the path is absent."""
    if not fact.ok:
        return None
    *kind, mode, owner, group = fact.stdout.split()
    return " ".join(kind), mode, owner, group


def _ownership_actions(
    path: str, current: tuple[str, str, str, str], mode: int, owner: str, group: str
) -> list[Action]:
    _, have_mode, have_owner, have_group = current
    actions: list[Action] = []
    if int(have_mode, 8) != mode:
        actions.append(Run(sh("chmod", f"{mode:o}", path), f"mode {have_mode} → {mode:o}"))
    if (have_owner, have_group) != (owner, group):
        actions.append(Run(sh("chown", f"{owner}:{group}", path), f"owner {have_owner}:{have_group} → {owner}:{group}"))
    return actions


@dataclass(frozen=True)
class ManagedFile:
    """A file whose whole content, mode and owner the appliance owns."""

    path: str
    content: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"

    @property
    def name(self) -> str:
        return f"file {self.path}"

    def written_files(self) -> tuple[ManagedFile, ...]:
        return (self,)

    def probes(self) -> Mapping[str, str]:
        return {"stat": _stat_probe(self.path), "sha256": sh("sha256sum", self.path)}

    def plan(self, facts: Facts) -> list[Action]:
        current = _stat_fields(facts["stat"])
        wanted = hashlib.sha256(self.content).hexdigest()
        have = facts["sha256"].stdout.split()[0] if facts["sha256"].ok else None
        if current is None or have != wanted:
            why = "create" if current is None else "content differs"
            return [Upload(self.path, self.content, self.mode, self.owner, self.group, why)]
        return _ownership_actions(self.path, current, self.mode, self.owner, self.group)


@dataclass(frozen=True)
class Directory:
    """A directory with this mode and owner (its content is not managed)."""

    path: str
    mode: int = 0o755
    owner: str = "root"
    group: str = "root"

    def probes(self) -> Mapping[str, str]:
        return {"stat": _stat_probe(self.path)}

    @property
    def name(self) -> str:
        return f"directory {self.path}"

    def plan(self, facts: Facts) -> list[Action]:
        current = _stat_fields(facts["stat"])
        if current is None:
            create = sh("install", "-d", "-m", f"{self.mode:o}", "-o", self.owner, "-g", self.group, self.path)
            return [Run(create, "create")]
        if current[0] != "directory":
            raise StepFailed(f"{self.path} exists and is a {current[0]}, not a directory: move it away")
        return _ownership_actions(self.path, current, self.mode, self.owner, self.group)


@dataclass(frozen=True)
class Converge:
    """A state with a read-only check (exit 0: already so) and a command that makes it so."""

    name: str
    check: str
    fix: str
    why: str

    def probes(self) -> Mapping[str, str]:
        return {"check": self.check}

    def plan(self, facts: Facts) -> list[Action]:
        return [] if facts["check"].ok else [Run(self.fix, self.why)]


@dataclass(frozen=True)
class Always:
    """A phase of a procedure: a command that runs every time (check mode only shows it)."""

    name: str
    command: str
    why: str

    def probes(self) -> Mapping[str, str]:
        return {}

    def plan(self, facts: Facts) -> list[Action]:
        return [Run(self.command, self.why)]


APT_ENV = "DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l"


def apt_get(*words: str) -> str:
    """apt-get that never asks, keeps changed config files and lists (never performs) restarts."""
    options = ("-y", "-q", "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold")
    return f"{APT_ENV} {sh('apt-get', *options, *words)}"


@dataclass(frozen=True)
class Packages:
    """Debian packages that must be installed (never removed or upgraded here)."""

    label: str
    packages: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"packages: {self.label}"

    def probes(self) -> Mapping[str, str]:
        return {"installed": sh("dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\\n", *self.packages)}

    def plan(self, facts: Facts) -> list[Action]:
        lines = (line.split() for line in facts["installed"].stdout.splitlines())
        installed = {fields[0].split(":")[0] for fields in lines if len(fields) == 2 and fields[1] == "installed"}
        missing = [package for package in self.packages if package not in installed]
        if not missing:
            return []
        install = f"{apt_get('update')} && {apt_get('install', '--no-install-recommends', *missing)}"
        return [Run(install, "install " + " ".join(missing))]


@dataclass(frozen=True)
class ConfigFiles:
    """Files of one program and the command that makes it take them up, run only after a change."""

    name: str
    files: tuple[ManagedFile, ...]
    on_change: str
    why: str

    def written_files(self) -> tuple[ManagedFile, ...]:
        return self.files

    def probes(self) -> Mapping[str, str]:
        return {
            f"{index}:{key}": command for index, file in enumerate(self.files) for key, command in file.probes().items()
        }

    def plan(self, facts: Facts) -> list[Action]:
        actions: list[Action] = []
        for index, file in enumerate(self.files):
            own = {key.split(":", 1)[1]: fact for key, fact in facts.items() if key.startswith(f"{index}:")}
            actions.extend(file.plan(own))
        return [*actions, Run(self.on_change, self.why)] if actions else []
