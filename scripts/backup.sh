#!/usr/bin/env bash
# Backups of the appliance to Tencent COS (installed as BASE/bin/backup.sh by inv bootstrap).
#   backup.sh [--reason R]            take a backup now (cron: --reason cron; deploy: --reason pre-deploy)
#   backup.sh list | prune [--dry-run] | restore --id ID | drill [--id ID]   (age identity on stdin)
# A thin wrapper: one run at a time (a lock), then the Python in BASE/lib/backup.pyz. Exit status 0 on
# success, 1 on failure (one line on stderr), 75 when another run holds the lock (BACKUP_LOCK_WAIT=SECONDS
# waits that long for it first). Lines are also appended, timestamped, to BASE/shared/backups/backup.log.
set -euo pipefail
base=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
case "${1:-}" in
  backup | list | prune | restore | drill) ;;
  *) set -- backup "$@" ;;
esac
if [ "$1" != list ]; then
  lock="$base/shared/backups/.lock"
  exec 9>>"$lock"
  if ! flock -w "${BACKUP_LOCK_WAIT:-0}" 9; then
    echo "backup: another backup, restore or drill is running (lock $lock)" >&2
    exit 75
  fi
fi
# The lock stays held by the Python process, which inherits descriptor 9.
exec python3 "$base/lib/backup.pyz" --settings "$base/shared/backup.json" "$@"
