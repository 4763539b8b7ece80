"""What surrounds a deploy's or rollback's steps on the host: the reads it decides from, the deploy lock and the
audit line, the clean-up after a failed health gate, and the notification of the outcome.

Besides the executor (which runs the steps) this is the one place a deploy or rollback runs commands on the
host; the commands themselves come from `lock.py` and `release_commands.py`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping

from appliance import notify, release_commands
from appliance.config import Config, Settings
from appliance.errors import StepFailed
from appliance.lock import (
    acquire_lock,
    audit_entry,
    audit_line,
    holder_file,
    lock_holder,
    lock_holder_message,
    taken_before_boot,
)
from appliance.lock import release_lock as unlock
from appliance.releases import Release
from appliance.remote import RemoteHost, open_host
from appliance.shell import sh

LOCK_WAIT_SECONDS = 1800


def require_bootstrapped(remote: RemoteHost, settings: Settings) -> None:
    if remote.run(f"test -d {sh(settings.paths.bin)}").exit_code != 0:
        missing = f"{settings.paths.bin} missing"
        raise StepFailed(f"{settings.hosts[0].target}: not bootstrapped ({missing}): run inv bootstrap first")


def history(remote: RemoteHost, settings: Settings) -> list[str]:
    """The versions that became current, oldest first."""
    return remote.run(f"cat {sh(settings.paths.history)}").stdout.split()


def require_kept(remote: RemoteHost, release: Release) -> None:
    if remote.run(release_commands.kept_on_host(release)).exit_code != 0:
        target = release.settings.hosts[0].target
        raise StepFailed(f"{target}: release {release.version} or its image is no longer on the host: deploy it again")


def take_lock(remote: RemoteHost, settings: Settings, holder: Mapping[str, object], wait: bool) -> None:
    """The deploy lock, or one line naming its holder; with `wait`, poll until it is free (up to 30 min)."""
    deadline = time.monotonic() + (LOCK_WAIT_SECONDS if wait else 0)
    while remote.run(acquire_lock(settings, holder)).exit_code != 0:
        holder_text = remote.run(f"cat {sh(holder_file(settings))}").stdout
        before_boot = remote.run(taken_before_boot(settings)).exit_code == 0
        held = lock_holder_message(holder_text, time.time(), before_boot)
        if time.monotonic() >= deadline:
            raise StepFailed(f"{settings.hosts[0].target}: {held}")
        time.sleep(2)


def record_and_unlock(remote: RemoteHost, settings: Settings, entry: Mapping[str, object]) -> None:
    """The outcome appended to the audit log, then the lock released."""
    remote.run(audit_line(settings, entry))
    remote.run(unlock(settings))


def break_lock(config: Config) -> str:
    """Remove the host's deploy lock; the audit log records who broke whose lock. One line for the operator."""
    settings = config.settings
    target = settings.hosts[0].target
    with open_host(config) as remote:
        held = remote.run(f"cat {sh(holder_file(settings))}")
        if held.exit_code != 0:
            return f"{target}: no deploy lock is held"
        holder = lock_holder(held.stdout, time.time())
        entry = audit_entry("lock.break", holder=held.stdout.strip(), result="ok")
        remote.run(f"{unlock(settings)} && {audit_line(settings, entry)}")
    what = f"{holder[0]}, held for {holder[1]}s" if holder else "holder unreadable"
    return f"{target}: deploy lock removed ({what})"


def remove_failed_api(remote: RemoteHost, release: Release) -> str:
    """Take away an API that failed its gate (traffic never moved to it); return why it failed: its last log
    lines and health answer."""
    logs = remote.run(release_commands.api_log_tail(release)).stdout
    health = remote.run(release_commands.health_answer(release)).stdout
    remote.run(release_commands.remove_api(release))
    return f"last API log lines:\n{logs.rstrip()}\nhealth answer: {health.strip() or '(none)'}"


def restore_stack(remote: RemoteHost, release: Release) -> None:
    """The serving release's own stack back, after a failed deploy's stack-up gave services the new release's
    files and image (the relay, the stand-ins)."""
    remote.run(release_commands.release_stack(release))


def announce(channels: notify.Channels, settings: Settings, env: str, entry: Mapping[str, object], error: str) -> None:
    """Tell the configured WeCom group / mailbox how a deploy or rollback ended; a lost message is a warning."""
    if not (settings.notify.deploys and channels.configured):
        return
    subject = f"{settings.name} ({env}): {entry['command']} {entry['version']} {entry['result']}"
    lines = [
        f"host: {settings.hosts[0].target}",
        f"by: {entry['who']}",
        f"previous release: {entry['previous'] or 'none'}",
        f"took: {entry['seconds']}s",
        *([f"failed: {error}"] if error else []),
    ]
    for failure in notify.send(channels, subject, lines):
        sys.stderr.write(f"warning: notification not delivered: {failure}\n")
