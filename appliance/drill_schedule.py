"""`inv restore.drill --schedule`: a weekly restore drill on the operator's machine, where the age key lives.

The host cannot drill (it never holds the private key), so the schedule lives here: a systemd --user timer
when this machine has a user manager (Persistent: a laptop that was off drills at its next start), else a
block in the user's crontab between two marker lines. Either runs `inv restore.drill` with no terminal and
no SSH agent: the key files come from the config. The host records each drill's result in its metrics
(backup.sh drill), and a schedule that stopped is what BackupNotVerified notices.

What to install is computed from facts (the files and crontab as they are); `apply` writes only what differs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Config
from appliance.errors import ApplianceError
from appliance.render import render_template
from appliance.shell import sh

CALENDAR = "Mon *-*-* 05:00:00"  # weekly: backup.verified_max_age_days (8) allows one missed day
CRON_SCHEDULE = "0 5 * * 1"
HEADER = "installed by inv restore.drill --schedule; remove it with inv restore.drill --unschedule"
SYSTEMD, CRON = "systemd --user timer", "crontab"

Run = Callable[[Sequence[str], str | None], subprocess.CompletedProcess[str]]


def local_run(prefix: Sequence[str] = ()) -> Run:
    """Commands on this machine (`prefix`: the same inside another one, e.g. `docker exec C`)."""

    def run(argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([*prefix, *argv], input=stdin, capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            return subprocess.CompletedProcess(argv, 127, "", str(exc))

    return run


@dataclass(frozen=True)
class DrillJob:
    """The scheduled command: `inv restore.drill` for one environment of one config file."""

    name: str  # unit and crontab-marker name
    target: str  # user@host, for the descriptions
    directory: Path  # where tasks.py is: inv looks for it there
    argv: tuple[str, ...]


def drill_job(config: Config, tasks_dir: Path, host: str | None = None, inv: Path | None = None) -> DrillJob:
    """The job for `config` (by its absolute path) and `host` if given; this venv's inv unless `inv` is given."""
    program = inv or Path(sys.executable).parent / "inv"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{config.settings.name}-{config.env}")
    argv = (str(program), "restore.drill", "--config", str(config.path.resolve()), "--env", config.env,
            *(("--host", host) if host else ()))  # fmt: skip
    return DrillJob(f"cvm-appliance-drill-{slug}", config.settings.hosts[0].target, tasks_dir.resolve(), argv)


def _command(job: DrillJob, specials: dict[str, str]) -> str:
    command = sh(*job.argv)
    for char, escaped in specials.items():
        command = command.replace(char, escaped)
    return command


def unit_files(job: DrillJob, home: Path) -> dict[Path, str]:
    """The service and timer under ~/.config/systemd/user ('%' and '$' mean something to systemd)."""
    folder = home / ".config/systemd/user"
    context = {
        "header": HEADER,
        "name": job.name,
        "target": job.target,
        "directory": sh(str(job.directory)),
        "command": _command(job, {"%": "%%", "$": "$$"}),
        "calendar": CALENDAR,
    }
    return {
        folder / f"{job.name}.{kind}": render_template(f"systemd/drill.{kind}.j2", context)
        for kind in ("service", "timer")
    }


def cron_block(job: DrillJob) -> str:
    """The crontab lines ('%' is a newline to cron)."""
    context = {
        "header": HEADER,
        "name": job.name,
        "target": job.target,
        "schedule": CRON_SCHEDULE,
        "directory": sh(str(job.directory)),
        "command": _command(job, {"%": "\\%"}),
    }
    return render_template("systemd/drill.cron.j2", context)


def crontab_with(current: str, name: str, block: str | None) -> str:
    """`current` with the block of `name` replaced by `block` (None: removed); other lines untouched."""
    begin, end = f"# BEGIN {name}:", f"# END {name}"
    kept: list[str] = []
    inside = False
    for line in current.splitlines(keepends=True):
        if line.startswith(begin):
            inside = True
        elif inside and line.rstrip("\n") == end:
            inside = False
        elif not inside:
            kept.append(line)
    text = "".join(kept)
    if text and not text.endswith("\n"):
        text += "\n"
    return text + (block or "")


@dataclass(frozen=True)
class Scheduled:
    how: str  # SYSTEMD or CRON
    changed: bool
    lines: tuple[str, ...]  # what was installed or removed, and how to undo or inspect it


def has_user_manager(run: Run) -> bool:
    return run(["systemctl", "--user", "show-environment"], None).returncode == 0


def read_crontab(run: Run) -> str | None:
    """The user's crontab ("" when there is none), or None when this machine has no crontab program."""
    done = run(["crontab", "-l"], None)
    if done.returncode == 0:
        return done.stdout
    if done.returncode in (126, 127):
        return None
    if "no crontab" in done.stderr:
        return ""
    raise ApplianceError(f"crontab -l failed: {done.stderr.strip() or done.returncode}")


def _checked(run: Run, argv: Sequence[str], stdin: str | None = None) -> str:
    done = run(argv, stdin)
    if done.returncode != 0:
        raise ApplianceError(f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def schedule(job: DrillJob, home: Path, run: Run) -> Scheduled:
    """Install the weekly drill (a user timer, else a crontab block); a second run changes nothing."""
    if has_user_manager(run):
        files = unit_files(job, home)
        stale = {path: text for path, text in files.items() if not path.is_file() or path.read_text() != text}
        for path, text in stale.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        timer = f"{job.name}.timer"
        if stale:
            _checked(run, ["systemctl", "--user", "daemon-reload"])
        enabled = run(["systemctl", "--user", "is-enabled", timer], None).stdout.strip() == "enabled"
        active = run(["systemctl", "--user", "is-active", timer], None).stdout.strip() == "active"
        if not (enabled and active):
            _checked(run, ["systemctl", "--user", "enable", "--now", timer])
        return Scheduled(SYSTEMD, bool(stale) or not (enabled and active), (
            f"{timer}: {CALENDAR} (weekly), runs: {sh(*job.argv)}",
            *(str(path) for path in files),
            f"next run: systemctl --user list-timers {timer}; its lines: journalctl --user -u {job.name}",
            "on a server with no login session: loginctl enable-linger $USER (else it runs only while logged in)",
            "remove: inv restore.drill --unschedule",
        ))  # fmt: skip
    current = read_crontab(run)
    if current is None:
        raise ApplianceError(
            "inv restore.drill --schedule: this machine has neither a systemd user manager nor crontab: "
            "schedule the drill in CI instead (docs/examples/github-actions.yml, the drill job)"
        )
    wanted = crontab_with(current, job.name, cron_block(job))
    if wanted != current:
        _checked(run, ["crontab", "-"], wanted)
    line = next(line for line in cron_block(job).splitlines() if not line.startswith("#"))
    return Scheduled(CRON, wanted != current, (
        f"crontab: {line}", "see it: crontab -l", "remove: inv restore.drill --unschedule",
    ))  # fmt: skip


def unschedule(job: DrillJob, home: Path, run: Run) -> Scheduled:
    """Remove the drill's timer and its crontab block, wherever they are; nothing there is `ok`."""
    removed: list[str] = []
    files = [path for path in unit_files(job, home) if path.exists()]
    if files and has_user_manager(run):
        run(["systemctl", "--user", "disable", "--now", f"{job.name}.timer"], None)
    for path in files:
        path.unlink()
        removed.append(f"removed {path}")
    if files and has_user_manager(run):
        _checked(run, ["systemctl", "--user", "daemon-reload"])
    current = read_crontab(run)
    if current is not None:
        wanted = crontab_with(current, job.name, None)
        if wanted != current:
            _checked(run, ["crontab", "-"], wanted)
            removed.append(f"removed the {job.name} block from the crontab")
    return Scheduled(SYSTEMD if files else CRON, bool(removed), tuple(removed) or (f"{job.name}: nothing scheduled",))
