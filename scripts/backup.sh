#!/usr/bin/env bash
# Backups of the appliance to Tencent COS (installed as BASE/bin/backup.sh by inv bootstrap).
#   backup.sh [--reason R]            take a backup now (cron: --reason cron; deploy: --reason pre-deploy)
#   backup.sh list | prune [--dry-run] | restore --id ID | drill [--id ID]   (age identity on stdin)
#   backup.sh restore --to-time "2026-12-01 10:15:00+08:00"                  (point-in-time; identity on stdin)
#   backup.sh wal-push                PostgreSQL's spooled WAL to COS (backup.pitr; the systemd path unit)
# A thin wrapper: one run at a time (a lock), then the Python in BASE/lib/backup.pyz. Exit status 0 on
# success, 1 on failure (one line on stderr), 75 when another run holds the lock (BACKUP_LOCK_WAIT=SECONDS
# waits that long for it first). Lines are also appended, timestamped, to BASE/shared/backups/backup.log.
set -euo pipefail
base=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
case "${1:-}" in
  backup | list | prune | restore | drill | wal-push) ;;
  *) set -- backup "$@" ;;
esac
if [ "$1" = wal-push ]; then
  # Its own lock: WAL must keep moving to COS while a long backup or a restore runs.
  exec 9>>"$base/shared/backups/.wal-lock"
  flock -w 300 9
elif [ "$1" != list ]; then
  lock="$base/shared/backups/.lock"
  exec 9>>"$lock"
  if ! flock -w "${BACKUP_LOCK_WAIT:-0}" 9; then
    echo "backup: another backup, restore or drill is running (lock $lock)" >&2
    exit 75
  fi
fi
# The lock stays held by the Python process, which inherits descriptor 9.
exec python3 "$base/lib/backup.pyz" --settings "$base/shared/backup.json" "$@"
