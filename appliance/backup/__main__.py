"""The host's backup command: `python3 backup.pyz --settings FILE COMMAND` (run by bin/backup.sh).

Commands: `backup [--reason R] [--only redis]`, `list` (JSON lines), `restore --id ID | --to-time ISO`,
`drill [--id ID]`, `prune [--dry-run]`, `wal-push` (PostgreSQL's spooled WAL to COS). restore and drill
read the age identity from standard input: the private key never touches the host's disk. Each run ends
with one line (stdout on success, stderr on failure, exit status 1) and appends its lines, timestamped, to
BASE/shared/backups/backup.log.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from appliance.backup import metrics, wal
from appliance.backup.errors import BackupError
from appliance.backup.manifest import FULL, REDIS
from appliance.backup.runner import Runner
from appliance.backup.settings import HostSettings
from appliance.host_paths import DEFAULT_BASE, HostPaths

DEFAULT_SETTINGS = HostPaths(DEFAULT_BASE).backup_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backup", description="backups of the appliance to Tencent COS")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS)
    commands = parser.add_subparsers(dest="command", required=True)
    backup = commands.add_parser("backup", help="take a backup now")
    backup.add_argument("--reason", default="manual")
    backup.add_argument("--only", choices=[REDIS], help="Redis alone (backup.redis_schedule)")
    commands.add_parser("list", help="the backups in COS, one JSON object a line")
    restore = commands.add_parser("restore", help="restore a backup into the running stack (identity on stdin)")
    restore.add_argument("--id", help="the backup (with --to-time: the base backup to replay from)")
    restore.add_argument("--to-time", type=moment, help="ISO 8601 with a UTC offset (point-in-time recovery)")
    restore.add_argument("--exclude", help="never the base backup to replay from (inv restore's pre-restore one)")
    drill = commands.add_parser("drill", help="restore into throwaway containers and compare (identity on stdin)")
    drill.add_argument("--id")
    drill.add_argument("--to-time", type=moment, help="also replay the base backup and the WAL to this moment")
    prune = commands.add_parser("prune", help="apply the retention policy")
    prune.add_argument("--dry-run", action="store_true")
    prune.add_argument("--now", type=moment, help="apply the policy as of this time (what a later prune will delete)")
    commands.add_parser("wal-push", help="archive the WAL PostgreSQL spooled (the systemd path unit runs it)")
    return parser


def moment(text: str) -> datetime:
    try:
        return wal.parse_moment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _identity() -> str:
    text = sys.stdin.read()
    if "AGE-SECRET-KEY-" not in text:
        raise BackupError("no age identity on standard input (expected an AGE-SECRET-KEY-… line)")
    return text


class _Log:
    def __init__(self, settings: HostSettings) -> None:
        self.path = settings.backups_dir / "backup.log"

    def __call__(self, line: str, stream: TextIO | None = None) -> None:
        print(line, file=stream or sys.stdout, flush=True)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(f"{stamp} {line}\n")
        except OSError:
            pass  # a full disk must not hide the line itself


def _backup_metrics(scope: str, started: float, size: int | None) -> dict[str, float]:
    """A backup run's metric values: `size` is None for a failed run. Redis-only runs have their own."""
    now, ok = time.time(), size is not None
    if scope == REDIS:
        return {
            "appliance_backup_redis_last_run_success": int(ok),
            **({"appliance_backup_redis_last_success_timestamp_seconds": now} if ok else {}),
        }
    values = {"appliance_backup_last_run_timestamp_seconds": now, "appliance_backup_last_run_success": int(ok)}
    if size is not None:
        values |= {
            "appliance_backup_last_success_timestamp_seconds": now,
            "appliance_backup_last_duration_seconds": round(now - started, 3),
            "appliance_backup_last_size_bytes": size,
            "appliance_backup_first_success_timestamp_seconds": now,
        }
    return values


def run(args: argparse.Namespace) -> int:
    settings = HostSettings.load(Path(args.settings))
    log = _Log(settings)
    now = getattr(args, "now", None)
    clock = (lambda: now) if now is not None else (lambda: datetime.now(timezone.utc))
    runner = Runner(settings, log=lambda line: log(line, sys.stderr), clock=clock)
    state = settings.backups_dir / "metrics.json"
    started = time.time()
    try:
        if args.command == "backup":
            scope = args.only or FULL
            try:
                manifest = runner.backup(args.reason, scope)
            except BaseException:
                metrics.record(state, settings.metrics_file, _backup_metrics(scope, started, None))
                raise
            metrics.record(state, settings.metrics_file, _backup_metrics(scope, started, manifest.encrypted_size))
            try:
                pruned = runner.prune(dry_run=False)
                gone = f"deleted none: {pruned.refused}" if pruned.refused else f"deleted {len(pruned.decision.delete)}"
                kept = f"; retention kept {len(pruned.decision.keep)}, {gone}"
            except BackupError as exc:
                kept = f"; retention not applied: {exc}"
            log(
                f"backup {manifest.id} ok: {len(manifest.parts)} parts, {manifest.encrypted_size / 1e6:.1f} MB "
                f"encrypted, {time.time() - started:.1f}s, cos://{settings.cos.bucket}/{settings.key_prefix}"
                f"{manifest.id}/ (reason {args.reason}{', redis only' if scope == REDIS else ''}){kept}"
            )
        elif args.command == "list":
            for item in runner.stored():
                print(json.dumps({"id": item.id, "created": item.created.isoformat(), "complete": item.complete,
                                  "verified": item.verified, "size": item.size, "scope": item.scope}))  # fmt: skip
        elif args.command == "restore":
            log(runner.restore(args.id, _identity(), args.to_time, args.exclude))
        elif args.command == "drill":
            identity = _identity()
            try:
                line, drilled = runner.drill(args.id, identity, args.to_time)
            except BaseException:
                metrics.record(state, settings.metrics_file, {
                    "appliance_backup_drill_last_run_timestamp_seconds": time.time(),
                    "appliance_backup_drill_last_success": 0,
                    "appliance_backup_drill_last_duration_seconds": round(time.time() - started, 3),
                })  # fmt: skip
                raise
            metrics.record(state, settings.metrics_file, {
                "appliance_backup_drill_last_run_timestamp_seconds": time.time(),
                "appliance_backup_drill_last_success": 1,
                "appliance_backup_drill_last_duration_seconds": round(time.time() - started, 3),
                "appliance_backup_last_verified_timestamp_seconds": drilled.timestamp(),
            })  # fmt: skip
            log(line)
        elif args.command == "wal-push":
            pushed = runner.wal_push()
            if pushed:
                metrics.record(state, settings.metrics_file, {
                    "appliance_backup_wal_last_archived_timestamp_seconds": time.time(),
                })  # fmt: skip
                log(f"wal-push: archived {len(pushed)} file(s), {pushed[0]} … {pushed[-1]}")
        elif args.command == "prune":
            pruned = runner.prune(args.dry_run)
            verb = "would delete" if args.dry_run else "deleted"
            doomed = ", ".join(pruned.decision.delete) or "none"
            outcome = f"would have deleted {doomed}, but {pruned.refused}" if pruned.refused else f"{verb} {doomed}"
            log(f"retention: keep {', '.join(pruned.decision.keep) or 'none'}; {outcome}")
    except BackupError as exc:
        log(f"{args.command} failed: {exc}", sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a missing tool: still one line, still a failure
        line = f"{args.command} failed: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a dump's pipe names no file: say where and what to do
            line += f" (in {settings.backups_dir}): free space on that disk (docs/runbook.md#diskfull)"
        log(line, sys.stderr)
        return 1
    return 0


def main() -> None:
    args = _parser().parse_args()
    try:
        sys.exit(run(args))
    except BackupError as exc:  # settings unreadable: no log file to write to yet
        print(f"{args.command} failed: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
