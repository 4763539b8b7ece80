"""What point-in-time recovery costs: `python -m bench.backup_pitr [--scale 70] [--seconds 20] [--rounds 3]`.

1. Write throughput with WAL archiving off and on: pgbench (its TPC-B-like script, 4 clients) against a
   throwaway server of the PostgreSQL stand-in started with the stack's own command (rendered from the compose
   template: wal_level, archive_timeout, the archive_command into the spool), and with only archive_mode
   switched off for the "off" rounds. While archiving is on, the host's wal-push (appliance.backup.wal: gzip,
   age, upload to the local COS with CRC64) drains the spool every second in this process, as the systemd path
   unit does on a host, so its CPU competes with the server's as it would on a CVM. Rounds alternate off/on
   on the same data, so a burst of load from elsewhere hits both; medians and the per-pair ratio are printed.
2. A ~1 GB database (pgbench -i -s 70, archiving off): the base backup a full backup takes (dump.base_backup:
   pg_basebackup -Ft -X fetch -Z 1 through docker exec), age encrypt, upload; then download, decrypt and what a
   recovery does with it (dump.drill_replay: extract, start, replay, promote) in a fresh throwaway server.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import docker

from appliance import sandbox
from appliance.backup import dump, wal
from appliance.backup.cos import MB
from bench.backup import bench_cos, print_steps, timed, timed_cos_round_trip
from tests.appliance.test_backup_pitr import postgres_service

BUCKET = "bench-pitr-1250000000"
NAME = "bench-pitr"
SPOOL_MOUNT = "/var/lib/postgresql/wal"


def start_server(image: str, command: list[str], volume: str, spool: Path) -> str:
    subprocess.run(["docker", "rm", "-f", NAME], capture_output=True, check=False)
    subprocess.run(
        ["docker", "run", "-d", "--name", NAME, "--network", "none", "-e", "POSTGRES_USER=appliance",
         "-e", "POSTGRES_DB=appliance", "-e", "POSTGRES_PASSWORD=bench", "-v", f"{volume}:{dump.PGDATA}",
         "-v", f"{spool}:{SPOOL_MOUNT}", image, *command],
        capture_output=True, check=True,
    )  # fmt: skip
    dump.wait_ready(NAME, "bench: PostgreSQL")
    return NAME


def pgbench(container: str, *args: str) -> str:
    return dump.docker("exec", container, "pgbench", "-U", dump.PG_USER, *args, dump.PG_DB, what="pgbench")


def tps(output: str) -> float:
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
    if match is None:
        raise RuntimeError(f"pgbench printed no tps: {output[-300:]}")
    return float(match.group(1))


class Pusher(threading.Thread):
    """wal-push every second until stopped: the path unit's job."""

    def __init__(self, archive: wal.Archive, spool: Path, recipient: str, work: Path) -> None:
        super().__init__(daemon=True)
        self.archive, self.spool, self.recipient, self.work = archive, spool, recipient, work
        self.done = threading.Event()
        self.pushed = 0

    def run(self) -> None:
        while not self.done.is_set():
            self.pushed += len(self.archive.push(self.spool, self.recipient, self.work, lambda: "bench"))
            self.done.wait(1)

    def stop(self) -> int:
        self.done.set()
        self.join()
        self.pushed += len(self.archive.push(self.spool, self.recipient, self.work, lambda: "bench"))
        return self.pushed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale of the base backup's database")
    parser.add_argument("--seconds", type=int, default=20, help="length of each pgbench round")
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs")
    args = parser.parse_args()
    image = sandbox.standin_image(docker.from_env(), "postgres")
    key, recipient, fake, cos = bench_cos(BUCKET)
    volume = f"{NAME}-data"
    with tempfile.TemporaryDirectory(prefix="bench-pitr-", dir="/var/tmp") as scratch:
        work = Path(scratch)
        spool, push_work = work / "spool", work / "push"
        spool.mkdir()
        push_work.mkdir()
        service = postgres_service(work, recipient)
        on = [word.replace("$$", "$") for word in service["command"]]  # Compose's escape
        off = [word.replace("archive_mode=on", "archive_mode=off") for word in on]
        archive = wal.Archive(cos, "bench/")
        try:
            rounds: list[tuple[float, float]] = []
            pushed = 0
            start_server(image, off, volume, spool)
            pgbench(NAME, "-i", "-q", "-s", "10")
            for _ in range(args.rounds):
                start_server(image, off, volume, spool)
                without = tps(pgbench(NAME, "-n", "-c", "4", "-j", "2", "-T", str(args.seconds)))
                start_server(image, on, volume, spool)
                pusher = Pusher(archive, spool, recipient, push_work)
                pusher.start()
                try:
                    with_archiving = tps(pgbench(NAME, "-n", "-c", "4", "-j", "2", "-T", str(args.seconds)))
                finally:
                    pushed += pusher.stop()
                rounds.append((without, with_archiving))
            rows: list[tuple[str, float, int]] = []
            start_server(image, off, volume, spool)  # pg_basebackup costs the same either way; no spool to fill
            started = time.monotonic()
            pgbench(NAME, "-i", "-q", "-s", str(args.scale))
            generated = time.monotonic() - started
            db_size = int(dump.psql(NAME, "SELECT pg_database_size('appliance')").strip())
            base = work / "base.tar.gz"
            timed("pg_basebackup -Ft -X fetch -Z 1 (docker exec)", rows, lambda: base.stat().st_size,
                  lambda: dump.base_backup(NAME, base))  # fmt: skip
            stat = Path(dump.volume_path(volume)).stat()
            subprocess.run(["docker", "rm", "-f", NAME], capture_output=True, check=False)
            opened = timed_cos_round_trip(rows, base, key, recipient, cos)
            (work / "wal").mkdir()
            recovery = work / "recovery"
            recovery.mkdir()
            timed("recovery: extract, start, replay, promote", rows, lambda: opened.stat().st_size,
                  lambda: dump.drill_replay(NAME, image, opened, work / "wal", None, recovery,
                                            (stat.st_uid, stat.st_gid), [], 600))  # fmt: skip
        finally:
            subprocess.run(["docker", "rm", "-f", NAME], capture_output=True, check=False)
            subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True, check=False)
            fake.stop()
    ratios = [with_archiving / without for without, with_archiving in rounds]
    print(f"pgbench -c 4 -j 2 -T {args.seconds}, scale 10, {args.rounds} off/on pairs; {pushed} WAL files archived\n")
    print("| archiving | tps (median) | rounds |\n|---|---|---|")
    print(f"| off | {statistics.median(r[0] for r in rounds):.0f} | {', '.join(f'{r[0]:.0f}' for r in rounds)} |")
    print(f"| on (+ wal-push) | {statistics.median(r[1] for r in rounds):.0f} | "
          f"{', '.join(f'{r[1]:.0f}' for r in rounds)} |")  # fmt: skip
    print(f"\non/off per pair: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}\n")
    print(f"database: {db_size / MB:.0f} MB (pgbench -i -s {args.scale}, {generated:.0f}s)\n")
    backup = ("base backup total (backup + encrypt + upload)", ("pg_basebackup", "age encrypt", "upload"))
    restore = ("restore total (download + decrypt + recovery)", ("download", "age decrypt", "recovery"))
    print_steps(rows, db_size, backup, restore)


if __name__ == "__main__":
    main()
