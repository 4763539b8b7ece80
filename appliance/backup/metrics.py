"""The backup metrics as a Prometheus textfile, rewritten whole (atomically) after every run."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path

# name → help; values live in a small JSON state file next to the backups so runs of each kind
# (backup, drill) keep the other's last values.
METRICS = {
    "appliance_backup_last_run_timestamp_seconds": "Unix time the last backup run ended.",
    "appliance_backup_last_run_success": "1 if the last backup run succeeded, else 0.",
    "appliance_backup_last_success_timestamp_seconds": "Unix time of the last successful backup.",
    "appliance_backup_last_duration_seconds": "Seconds the last successful backup took.",
    "appliance_backup_last_size_bytes": "Encrypted bytes of the last successful backup.",
    "appliance_backup_first_success_timestamp_seconds": "Unix time of the first successful backup on this host.",
    "appliance_backup_redis_last_run_success": "1 if the last Redis-only backup run succeeded, else 0.",
    "appliance_backup_redis_last_success_timestamp_seconds": "Unix time of the last successful Redis-only backup.",
    "appliance_backup_wal_last_archived_timestamp_seconds": "Unix time WAL was last archived to COS (backup.pitr).",
    "appliance_backup_drill_last_run_timestamp_seconds": "Unix time the last restore drill ended.",
    "appliance_backup_drill_last_success": "1 if the last restore drill passed, else 0.",
    "appliance_backup_drill_last_duration_seconds": "Seconds the last restore drill took.",
    "appliance_backup_last_verified_timestamp_seconds": "Unix time the newest backup a drill verified was taken.",
}


def render(values: dict[str, float]) -> str:
    """The textfile for the known metrics that have a value, in a fixed order."""
    lines: list[str] = []
    for name, text in METRICS.items():
        if name in values:
            # Every digit of a Unix time: ":g" alone keeps six, i.e. rounds a timestamp to ~1.4 hours.
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {values[name]:.15g}"]
    return "\n".join(lines) + "\n" if lines else ""


def _write_atomically(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    staging.chmod(mode)
    staging.replace(path)


# Values that only ever move one way: the first backup stays the first, an old backup drilled later does
# not make the newest verified one older.
COMBINE: dict[str, Callable[[float, float], float]] = {
    "appliance_backup_first_success_timestamp_seconds": min,
    "appliance_backup_last_verified_timestamp_seconds": max,
}


def record(state_file: Path, metrics_file: Path, updates: dict[str, float]) -> dict[str, float]:
    """Merge `updates` into the state and rewrite the textfile; returns the merged values. Locked: wal-push
    runs beside a backup (it has a lock of its own), and neither may lose the other's update."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(state_file.parent, os.O_RDONLY)  # the folder is the lock: no file left behind
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        try:
            values: dict[str, float] = json.loads(state_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            values = {}
        for name, value in updates.items():
            values[name] = COMBINE[name](values[name], value) if name in COMBINE and name in values else value
        _write_atomically(state_file, json.dumps(values, sort_keys=True) + "\n", 0o600)
        _write_atomically(metrics_file, render(values), 0o644)
    finally:
        os.close(folder)
    return values
