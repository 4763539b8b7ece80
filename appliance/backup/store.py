"""Where backups are kept, as an interface: the runner and the WAL archive know only `BackupStore`; COS
implements it (`cos.CosStore`), and a new kind of store is a new class with these methods.

Host side: this module travels in the zipapp.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: str


class BackupStore(Protocol):
    """Objects by key. A failure is one BackupError line; a delete the store's key may not make is DeleteRefused."""

    def check_bucket(self) -> None:
        """Fail early, in one line, when the store is unreachable or its key is wrong."""
        ...

    def put_file(self, key: str, path: Path) -> str:
        """Store `path` as `key`; return the CRC64 both sides agree on."""
        ...

    def get_file(self, key: str, path: Path) -> str:
        """Fetch `key` into `path`, checked against the store's CRC64 (a mismatch removes the file and fails)."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def objects(self, prefix: str) -> list[StoredObject]:
        """Every object under `prefix`."""
        ...

    def delete(self, keys: list[str]) -> None: ...

    def abort_stale_uploads(self, prefix: str, older_than_seconds: int, now: datetime | None = None) -> int:
        """Unfinished uploads under `prefix` older than that given up; how many."""
        ...
