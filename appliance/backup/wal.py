"""Point-in-time recovery: PostgreSQL's WAL archive in COS, compressed and age-encrypted on the host.

PostgreSQL's `archive_command` (compose/docker-compose.yml.j2) only copies a finished segment into
the host's spool (`BASE/shared/wal/incoming`, then renamed into `ready/`, so a reader never sees half a
file); a systemd path unit starts `backup.sh wal-push`, which gzips (a segment closed by
archive_timeout is mostly zeros), encrypts to the recipient and uploads each one with the CRC64 check,
and only then removes it from the spool. The host never holds the private key, so it can archive but
never read its archive.

Names: a segment is TIMELINE(8 hex) + LOG(8) + SEG(8); its place in the WAL stream is the last 16 hex
digits, which keep growing across timelines. `T.history` files (a timeline's branch point) are tiny
and kept forever; `SEGMENT.OFFSET.backup` files sort with their segment.
"""

from __future__ import annotations

import gzip
import re
import shutil
import struct
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from appliance.backup import crypt
from appliance.backup.errors import BackupError
from appliance.backup.store import BackupStore

SUFFIX = ".gz.age"
_SEGMENT = re.compile(r"^[0-9A-F]{24}")
_HISTORY = re.compile(r"^[0-9A-F]{8}\.history$")
_START = re.compile(r"^START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)$", re.MULTILINE)


def parse_moment(text: str) -> datetime:
    """A point in time with its UTC offset, e.g. "2026-12-01 10:15:00+08:00" (a bare time is ambiguous)."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a time such as 2026-12-01 10:15:00+08:00") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset: add one, such as +08:00")
    return parsed


def position(name: str) -> str | None:
    """Where a segment (or a backup history file) sits in the WAL stream, comparable across timelines."""
    return name[8:24] if _SEGMENT.match(name) else None


def is_history(name: str) -> bool:
    return bool(_HISTORY.match(name))


def start_segment(backup_label: str) -> str:
    """The first segment a base backup needs, from its backup_label."""
    match = _START.search(backup_label)
    if match is None:
        raise BackupError("the base backup's backup_label names no START WAL LOCATION")
    return match.group(1)


def needed(names: Iterable[str], start: str) -> list[str]:
    """What a recovery from a base backup starting at segment `start` may ask for: every history file
    and every segment from `start` on, in any timeline (PostgreSQL follows the history files)."""
    first = position(start) or ""
    return sorted(n for n in names if is_history(n) or (position(n) or "") >= first)


def expired(names: Iterable[str], oldest_start: str) -> list[str]:
    """Segments older than the oldest kept base backup's first one: no kept backup can replay them."""
    first = position(oldest_start) or ""
    return sorted(n for n in names if (p := position(n)) is not None and p < first)


def segment_system_id(path: Path) -> str | None:
    """The system identifier in a segment's first (long) page header; None for other files."""
    if not _SEGMENT.fullmatch(path.name):
        return None
    with path.open("rb") as handle:
        header = handle.read(32)
    return str(struct.unpack_from("<Q", header, 24)[0]) if len(header) == 32 else None


class Archive:
    """The WAL objects of one appliance in COS: `PREFIX/NAME/wal/SYSTEM-ID/FILE.gz.age`. The system id keeps
    a freshly initialised cluster (a wiped host before its restore) from overwriting the old one's segments."""

    def __init__(self, store: BackupStore, key_prefix: str) -> None:
        self.store = store
        self.prefix = f"{key_prefix}wal/"

    def key(self, system: str, name: str) -> str:
        return f"{self.prefix}{system}/{name}{SUFFIX}"

    def listing(self) -> dict[str, dict[str, str]]:
        """System id → archived file name → when COS stored it."""
        found: dict[str, dict[str, str]] = {}
        for item in self.store.objects(self.prefix):
            system, _, name = item.key[len(self.prefix) :].partition("/")
            if name.endswith(SUFFIX):
                found.setdefault(system, {})[name[: -len(SUFFIX)]] = item.modified
        return found

    def push(self, spool: Path, recipient: str, work: Path, server_id: Callable[[], str]) -> list[str]:
        """Every ready file of the spool, oldest first, compressed, encrypted, uploaded, then removed.
        History and backup-label files carry no system id: they belong to the server running now."""
        pushed: list[str] = []
        ready = spool / "ready"
        running: str | None = None
        for path in sorted(p for p in ready.iterdir() if not p.name.startswith(".")) if ready.is_dir() else []:
            system = segment_system_id(path)
            if system is None:
                running = running or server_id()
                system = running
            packed = work / f"{path.name}.gz"
            with path.open("rb") as source, gzip.open(packed, "wb", compresslevel=6) as target:
                shutil.copyfileobj(source, target)
            sealed = work / f"{path.name}{SUFFIX}"
            crypt.encrypt(packed, sealed, recipient)
            packed.unlink()
            self.store.put_file(self.key(system, path.name), sealed)
            sealed.unlink()
            path.unlink()
            pushed.append(path.name)
        return pushed

    def fetch(self, system: str, names: Iterable[str], identity: str, target: Path, work: Path) -> None:
        """Download, decrypt and unpack `names` into `target`; a damaged one fails naming it."""
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            sealed, packed = work / f"{name}{SUFFIX}", work / f"{name}.gz"
            self.store.get_file(self.key(system, name), sealed)
            try:
                crypt.decrypt(sealed, packed, identity)
                with gzip.open(packed, "rb") as source, (target / name).open("wb") as plain:
                    shutil.copyfileobj(source, plain)
            except (BackupError, OSError, EOFError) as exc:
                raise BackupError(f"WAL segment {name} is damaged and cannot be replayed ({exc})") from None
            sealed.unlink()
            packed.unlink()

    def delete(self, system: str, names: Iterable[str]) -> None:
        self.store.delete([self.key(system, name) for name in names])
