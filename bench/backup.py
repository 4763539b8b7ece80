"""Backup and restore throughput: `python -m bench.backup [--mb 1024]`; prints a Markdown table.

The same code the host runs (appliance.backup: pg_dump through `docker exec`, age, the COS edge) on a
generated database of about --mb megabytes, in a throwaway container of the sandbox's PostgreSQL
stand-in, uploading to the local COS (tests/cosfake) on loopback. Baseline in the same run: a plain
file copy of the dump, so the figures can be read as ratios on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker

from appliance import sandbox
from appliance.backup import crypt, dump
from appliance.backup.cos import MB, CosStore, CosTarget
from tests.conftest import free_port
from tests.cosfake import FakeCos

BUCKET = "bench-1250000000"
ROWS_SQL = (
    "INSERT INTO bench (body) SELECT (SELECT string_agg(md5(random()::text || n || m), '')"
    " FROM generate_series(1, 32) m) FROM generate_series(1, 50000) n"
)
PG_ENV = ["-e", "POSTGRES_USER=appliance", "-e", "POSTGRES_DB=appliance", "-e", "POSTGRES_PASSWORD=bench"]


def timed(what: str, rows: list[tuple[str, float, int]], size: Callable[[], int], step: Callable[[], object]) -> None:
    started = time.monotonic()
    step()
    rows.append((what, time.monotonic() - started, size()))


def timed_cos_round_trip(
    rows: list[tuple[str, float, int]], plain: Path, key: str, recipient: str, cos: CosStore
) -> Path:
    """Time `plain` sealed with age, up to the local COS, down again and opened, as a backup and its restore move
    it; returns the opened copy (back.SUFFIXES beside `plain`)."""
    sealed, back = plain.with_name(f"{plain.name}.age"), plain.with_name("back.age")
    opened = plain.with_name("back" + "".join(plain.suffixes))
    timed("age encrypt", rows, lambda: sealed.stat().st_size, lambda: crypt.encrypt(plain, sealed, recipient))
    timed("upload to local COS (16 MB parts, CRC64)", rows, lambda: sealed.stat().st_size,
          lambda: cos.put_file(f"bench/{sealed.name}", sealed))  # fmt: skip
    timed("download from local COS (CRC64)", rows, lambda: back.stat().st_size,
          lambda: cos.get_file(f"bench/{sealed.name}", back))  # fmt: skip
    timed("age decrypt", rows, lambda: opened.stat().st_size, lambda: crypt.decrypt(back, opened, key))
    return opened


def bench_cos(bucket: str) -> tuple[str, str, FakeCos, CosStore]:
    """A fresh age identity (its text and recipient) and a started local COS with `bucket`."""
    key = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
    recipient = next(line.split(": ")[1] for line in key.splitlines() if line.startswith("# public key: "))
    fake = FakeCos("127.0.0.1", free_port(), "bench", "bench-key")
    fake.create_bucket(bucket)
    fake.start()
    cos = CosStore(CosTarget(bucket, "ap-shanghai", "bench", "bench-key", f"http://127.0.0.1:{fake.port}", 16 * MB))
    return key, recipient, fake, cos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=1024, help="size of the generated table (MB)")
    args = parser.parse_args()
    client = docker.from_env()
    image = sandbox.standin_image(client, "postgres")
    key, recipient, fake, cos = bench_cos(BUCKET)
    rows: list[tuple[str, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="bench-backup-", dir="/var/tmp") as scratch:
        work = Path(scratch)
        plain = work / "db.dump"
        with dump.throwaway("bench-backup-source", image, PG_ENV, ["postgres"]) as source:
            dump.wait_ready(source, "bench: PostgreSQL")
            started = time.monotonic()
            for _ in range(args.mb // 50 or 1):
                dump.psql(source, "CREATE TABLE IF NOT EXISTS bench (id bigserial PRIMARY KEY, body text NOT NULL)")
                # 1 KB of random hex per row: compresses about as well as text does (pg_dump -Fc is zlib).
                dump.psql(source, ROWS_SQL)
            generated = time.monotonic() - started
            db_size = int(dump.psql(source, "SELECT pg_database_size('appliance')").strip())
            timed("pg_dump -Fc (docker exec)", rows, lambda: plain.stat().st_size,
                  lambda: dump.dump_postgres(source, plain))  # fmt: skip
        timed("baseline: copy of the dump file", rows, lambda: plain.stat().st_size,
              lambda: shutil.copyfile(plain, work / "copy"))  # fmt: skip
        (work / "copy").unlink()
        opened = timed_cos_round_trip(rows, plain, key, recipient, cos)
        with dump.throwaway("bench-backup-target", image, PG_ENV, ["postgres"]) as target:
            dump.wait_ready(target, "bench: PostgreSQL")
            timed("pg_restore (docker exec)", rows, lambda: opened.stat().st_size,
                  lambda: dump.restore_postgres(target, opened, clean=False))  # fmt: skip
    fake.stop()
    print(f"database: {db_size / MB:.0f} MB on disk (generated in {generated:.0f}s); dump {plain_size(rows)} MB\n")
    backup = ("backup total (dump + encrypt + upload)", ("pg_dump", "age encrypt", "upload"))
    restore = ("restore total (download + decrypt + restore)", ("download", "age decrypt", "pg_restore"))
    print_steps(rows, db_size, backup, restore)


def print_steps(rows: list[tuple[str, float, int]], db_size: int, *totals: tuple[str, tuple[str, ...]]) -> None:
    """The steps as a Markdown table, then each total: (its label, the steps it sums, by their names' start)."""
    print("| step | seconds | MB | MB/s |\n|---|---|---|---|")
    for what, seconds, size in rows:
        print(f"| {what} | {seconds:.1f} | {size / MB:.0f} | {size / MB / seconds:.0f} |")
    for label, steps in totals:
        total = sum(s for w, s, _ in rows if w.startswith(steps))
        print(f"| {label} | {total:.1f} | {db_size / MB:.0f} (database) | {db_size / MB / total:.0f} |")


def plain_size(rows: list[tuple[str, float, int]]) -> str:
    return f"{rows[0][2] / MB:.0f}"


if __name__ == "__main__":
    main()
