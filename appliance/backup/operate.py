"""The operator's backup tasks over SSH: each runs BASE/bin/backup.sh on the host and shows its line.

restore and drill need the age private key; it is read here (backup.age_identity_file) and sent on
the command's standard input, so it exists on the host only in the memory of that one run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from appliance.backup import wal
from appliance.config import Config
from appliance.errors import ApplianceError, ConfigError
from appliance.remote import CommandResult, RemoteHost, open_host
from appliance.shell import sh


class BackupFailed(ApplianceError):
    """The host's backup command failed; its one line says why."""

    exit_code = 4


@dataclass(frozen=True)
class Listed:
    id: str
    created: str
    complete: bool
    verified: bool
    size: int
    scope: str = "full"  # hosts bootstrapped before Redis-only backups existed do not say


def _command(config: Config, *args: str) -> str:
    return sh(config.settings.paths.script("backup.sh"), *args)


def _enabled(config: Config) -> None:
    if not config.settings.backup.enabled:
        raise ConfigError(f"{config.path}: backup.enabled is false: enable [backup] and run inv bootstrap")


def identity(config: Config) -> str:
    """The operator's age identity text, from backup.age_identity_file."""
    name = config.settings.backup.age_identity_file
    if not name:
        raise ConfigError(f"{config.path}: backup.age_identity_file: set it to your age private key file")
    path = config.resolve(name)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{config.path}: backup.age_identity_file: {path}: {exc.strerror}") from None
    if "AGE-SECRET-KEY-" not in text:
        raise ConfigError(f"{config.path}: backup.age_identity_file: {path} holds no AGE-SECRET-KEY- line")
    return text


def _outcome(config: Config, result: CommandResult) -> str:
    target = config.settings.hosts[0].target
    if result.exit_code != 0:
        lines = (result.stderr.strip() or result.stdout.strip() or f"exit {result.exit_code}").splitlines()
        raise BackupFailed(f"{target}: {lines[-1]}")
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def run_backup(config: Config, remote: RemoteHost, reason: str, lock_wait: int = 0) -> str:
    """A backup now; `lock_wait` seconds to wait for one already running (cron's) before failing."""
    _enabled(config)
    command = f"BACKUP_LOCK_WAIT={int(lock_wait)} {_command(config, 'backup', '--reason', reason)}"
    return _outcome(config, remote.run(command))


def list_backups(config: Config, remote: RemoteHost) -> list[Listed]:
    _enabled(config)
    result = remote.run(_command(config, "list"))
    _outcome(config, result)
    return [Listed(**json.loads(line)) for line in result.stdout.splitlines() if line.startswith("{")]


def retention_preview(config: Config, remote: RemoteHost) -> str:
    """What retention would keep and delete now (nothing is deleted)."""
    _enabled(config)
    return _outcome(config, remote.run(_command(config, "prune", "--dry-run")))


def _with_identity(config: Config, remote: RemoteHost, *args: str) -> str:
    key = identity(config).encode()
    return _outcome(config, remote.stream(_command(config, *args), [key], lambda sent: None))


def _moment(config: Config, text: str, flag: str) -> str:
    """A --to-time value as ISO 8601, refused in one line without backup.pitr or a UTC offset."""
    if not config.settings.backup.pitr:
        raise ConfigError(f"{config.path}: backup.pitr is false: {flag} needs archived WAL (set it, bootstrap)")
    try:
        return wal.parse_moment(text).isoformat()
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def restore(config: Config, backup: str | None, to_time: str | None = None) -> tuple[str, str]:
    """A backup of what is there now, then `backup` restored, or PostgreSQL recovered to `to_time`
    (backup.pitr): (the first's line, the restore's line)."""
    _enabled(config)
    if backup is None and to_time is None:
        raise ConfigError("inv restore: give --backup ID, --to-time TIME, or both (replay from that backup)")
    command = ["restore", *(("--id", backup) if backup is not None else ())]
    if to_time is not None:
        command += ["--to-time", _moment(config, to_time, "inv restore --to-time")]
    identity(config)  # refuse before the pre-restore backup if the key is not at hand
    with open_host(config) as remote:
        before = run_backup(config, remote, "pre-restore")
        # "backup ID ok: …": that backup holds what is being replaced, never a base to replay from.
        return before, _with_identity(config, remote, *command, "--exclude", before.split()[1])


def drill(config: Config, backup: str | None, to_time: str | None = None) -> str:
    """The drill of `backup` (default: the newest complete one); with `to_time`, its base backup and the WAL
    are replayed to that moment too (backup.pitr)."""
    _enabled(config)
    command = ["drill", *(("--id", backup) if backup else ())]
    if to_time is not None:
        command += ["--to-time", _moment(config, to_time, "inv restore.drill --to-time")]
    with open_host(config) as remote:
        return _with_identity(config, remote, *command)


def table(backups: list[Listed]) -> str:
    rows = [f"{'backup':<18} {'scope':<6} {'state':<10} {'verified':<9} {'size':>10}"]
    for item in backups:
        state = "complete" if item.complete else "incomplete"
        verified = "yes" if item.verified else "no"
        rows.append(f"{item.id:<18} {item.scope:<6} {state:<10} {verified:<9} {item.size / 1e6:>7.1f} MB")
    return "\n".join(rows)
