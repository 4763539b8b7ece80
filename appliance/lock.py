"""The host's deploy lock and audit log: commands as values; deploy.py and the tasks run them."""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Mapping
from datetime import datetime, timezone

from appliance.config import Settings
from appliance.shell import sh

# A deploy or rollback that holds the lock longer than this has almost surely died without releasing it.
STALE_AFTER_SECONDS = 3600


def operator() -> str:
    """Who runs this command: user@machine on the operator's side."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def lock_dir(settings: Settings) -> str:
    return settings.paths.deploy_lock


def holder_file(settings: Settings) -> str:
    return lock_dir(settings) + "/holder.json"


def acquire_lock(settings: Settings, holder: Mapping[str, object]) -> str:
    """mkdir is atomic: the first deploy gets the folder, any other sees who holds it."""
    return f"mkdir {sh(lock_dir(settings))} && printf '%s\\n' {sh(json.dumps(holder))} > {sh(holder_file(settings))}"


def release_lock(settings: Settings) -> str:
    return f"rm -rf {sh(lock_dir(settings))}"


def taken_before_boot(settings: Settings) -> str:
    """Succeeds when the lock was taken before the host last started: its holder's SSH session died with the
    boot, so no deploy holds it. Both times are the host's own clock (PID 1's age marks the boot; in a
    container, the container's start)."""
    boot = "$(( $(date +%s) - $(ps -o etimes= -p 1) ))"
    return f'[ "$(stat -c %Y {sh(lock_dir(settings))})" -lt "{boot}" ]'


def lock_holder(holder_text: str, now: float) -> tuple[str, int] | None:
    """('alice@laptop (deploy v9)', age in seconds) from the lock's holder.json, None when unreadable."""
    try:
        holder = json.loads(holder_text)
        return f"{holder['who']} ({holder['command']} {holder['version']})", int(now - float(holder["since"]))
    except (ValueError, KeyError, TypeError):
        return None


def lock_holder_message(holder_text: str, now: float, before_boot: bool = False) -> str:
    """One line naming who holds the deploy lock, for what, and for how long (and whether it looks stale)."""
    holder = lock_holder(holder_text, now)
    if holder is None:
        return "deploy lock held (holder unreadable): if no deploy runs, break it with `inv lock.break`"
    who, age = holder
    if before_boot:
        return (
            f"deploy lock held by {who} for {age}s: it looks stale, it was taken before the host last booted "
            "and no deploy survives that; `inv lock.break`"
        )
    if age > STALE_AFTER_SECONDS:
        return f"deploy lock held by {who} for {age}s: it looks stale; if that deploy is gone, `inv lock.break`"
    return f"deploy lock held by {who} for {age}s (or wait for it with --wait)"


def audit_entry(command: str, **fields: object) -> dict[str, object]:
    """An audit log entry: when, who, which command, then the command's own fields."""
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"at": at, "who": operator(), "command": command, **fields}


def audit_line(settings: Settings, entry: Mapping[str, object]) -> str:
    """Append one JSON line to the host's audit log (append-only by convention and mode 0600)."""
    return f"umask 077; printf '%s\\n' {sh(json.dumps(entry, sort_keys=True))} >> {sh(settings.paths.audit_log)}"
