"""prometheus_client's multiprocess files, kept to a bounded set however often workers restart.

Each worker writes one file per kind (`counter_<pid>.db`, `histogram_<pid>.db`, `gauge_livesum_<pid>.db`)
and the collector reads every file at each scrape. Left alone, every restarted worker (max_requests,
HUP, a crash, a deploy) would leave its files behind and scrapes would slow down without end. So when
gunicorn reports a worker gone (`child_exit`, in the master), `retire_worker`:

- adds its counters and histograms into one archive file per kind (`counter_archive.db`,
  `histogram_archive.db`), which the collector reads and sums like any worker's file, so totals never
  go backwards, and deletes its files;
- deletes its gauge files (`mark_process_dead`): a dead worker has no open WebSockets.

The directory then holds at most 2 archives + 3 files per live worker. A scrape reads under a shared
lock and a merge writes under an exclusive one (`flock` on LOCK_NAME), so no scrape sees a worker's
values twice (archive and file) or not at all.

This module must not import service.metrics: the gunicorn master calls it, and creating metrics there
would give the master files of its own.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess
from prometheus_client.mmap_dict import MmapedDict

ARCHIVED_KINDS = ("counter", "histogram")
LOCK_NAME = "merge.lock"  # not *.db: the collector reads only those


@contextmanager
def _locked(directory: Path, mode: int) -> Iterator[None]:
    with (directory / LOCK_NAME).open("a") as lock:
        fcntl.flock(lock, mode)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def reading(directory: Path) -> Iterator[None]:
    """Hold while collecting: no merge runs meanwhile."""
    with _locked(directory, fcntl.LOCK_SH):
        yield


def retire_worker(directory: Path, pid: int) -> None:
    """Fold an exited worker's counters and histograms into the archives; drop its files and gauges."""
    with _locked(directory, fcntl.LOCK_EX):
        for kind in ARCHIVED_KINDS:
            dead = directory / f"{kind}_{pid}.db"
            if not dead.exists():
                continue
            mmaped: Any = MmapedDict  # untyped in prometheus_client
            archive = mmaped(str(directory / f"{kind}_archive.db"))
            try:
                for key, value, timestamp, _ in mmaped.read_all_values_from_file(str(dead)):
                    old, _ = archive.read_value(key)
                    archive.write_value(key, old + value, timestamp)
            finally:
                archive.close()
            dead.unlink()
        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
        for gauge in directory.glob(f"gauge_*_{pid}.db"):
            gauge.unlink(missing_ok=True)
