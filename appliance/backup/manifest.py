"""A backup's manifest: what it holds and how to check every byte of it (plain JSON, no secrets)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

FORMAT = 1
FULL, REDIS = "full", "redis"
ID_FORMAT = "%Y%m%dT%H%M%SZ"
_ID = re.compile(r"^\d{8}T\d{6}Z$")
MANIFEST = "manifest.json"
VERIFIED = "verified.json"


def backup_id(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime(ID_FORMAT)


def id_time(identifier: str) -> datetime | None:
    """The UTC time a backup id names, None for anything that is not an id."""
    if not _ID.match(identifier):
        return None
    return datetime.strptime(identifier, ID_FORMAT).replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Part:
    """One encrypted object: its plain and encrypted sizes and SHA-256, and COS's CRC64 of it."""

    name: str
    object: str
    size: int
    sha256: str
    encrypted_size: int
    encrypted_sha256: str
    crc64: str


@dataclass(frozen=True)
class Manifest:
    id: str
    created: str
    host: str
    name: str
    reason: str
    release: str | None
    versions: dict[str, str]
    parts: list[Part]
    tables: dict[str, int]  # PostgreSQL rows per table, counted in the dump itself
    redis_keys: int  # DBSIZE when the snapshot was asked for
    redis_sample: dict[str, str]  # a few keys and their types
    files: dict[str, str]  # artifacts: relative path → SHA-256
    seconds: float = 0.0
    format: int = FORMAT
    scope: str = FULL  # FULL, or REDIS: Redis alone (backup.redis_schedule), no tables or files
    # With backup.pitr: the base backup's cluster, its first WAL segment, and when it ended (UTC, ISO 8601).
    system_id: str | None = None
    wal_start: str | None = None
    base_end: str | None = None
    # A managed database's target (user@host:port/name, sslmode): the tables were dumped from it over TLS.
    database: str | None = None
    # What this backup leaves out on purpose, and why (e.g. "redis": a managed Redis its own snapshots cover).
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def encrypted_size(self) -> int:
        return sum(part.encrypted_size for part in self.parts)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        data["parts"] = [Part(**part) for part in data["parts"]]
        return cls(**data)


def count_copy_rows(sql_lines: Iterable[str]) -> dict[str, int]:
    """Rows per table in `pg_restore -f -` output: the lines between `COPY t (…) FROM stdin;` and `\\.`."""
    counts: dict[str, int] = {}
    table: str | None = None
    for raw in sql_lines:
        line = raw.rstrip("\n")
        if table is None:
            match = re.match(r"^COPY (.+?) (?:\(.*\) )?FROM stdin;$", line)
            if match:
                table = match.group(1)
                counts[table] = 0
        elif line == "\\.":
            table = None
        else:
            counts[table] += 1
    return counts
