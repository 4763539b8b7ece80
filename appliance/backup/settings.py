"""What the host-side backup code knows: `BASE/shared/backup.json` (0600), written by bootstrap."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.backup.cos import CosTarget
from appliance.backup.errors import BackupError
from appliance.host_paths import HostPaths


@dataclass(frozen=True)
class Policy:
    """Calendar retention: the newest backup of each of the last N days, ISO weeks and months."""

    daily: int = 7
    weekly: int = 4
    monthly: int = 6


@dataclass(frozen=True)
class ManagedDatabase:
    """A managed PostgreSQL (TencentDB) the backup dumps from a client container of `image`, over TLS with the
    API's sslmode and CA: `user` is the role that owns the tables (the migration role when there is one)."""

    host: str
    port: int
    name: str
    user: str
    password: str
    sslmode: str
    ca_pem: str | None  # None only with sslmode "require"
    image: str

    @property
    def target(self) -> str:
        """How failures name it (never the password)."""
        return f"{self.user}@{self.host}:{self.port}/{self.name} (sslmode {self.sslmode})"


@dataclass(frozen=True)
class HostSettings:
    """What bootstrap tells the host's backup code: this appliance and its base folder on the host, where backups
    go (COS, key prefix, age recipient), how long they stay, and which data a managed service holds instead."""

    name: str
    base_dir: str
    host: str
    prefix: str
    recipient: str
    cos: CosTarget
    retention: Policy
    pitr: bool = False  # PostgreSQL archives WAL (backup.pitr): base backups join the full backups
    database: ManagedDatabase | None = None  # a managed PostgreSQL instead of the stack's container
    managed_redis: str | None = None  # HOST:PORT of a managed Redis: not the appliance's to back up

    @property
    def key_prefix(self) -> str:
        """Every object of this appliance's backups starts with this."""
        return f"{self.prefix}{self.name}/"

    @property
    def paths(self) -> HostPaths:
        """The host's layout under `base_dir`."""
        return HostPaths(self.base_dir)

    @property
    def backups_dir(self) -> Path:
        return Path(self.paths.backups)

    @property
    def wal_spool(self) -> Path:
        return Path(self.paths.wal_spool)

    @property
    def metrics_file(self) -> Path:
        return Path(self.paths.metrics) / "backup.prom"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> HostSettings:
        data = json.loads(text)
        return cls(
            **{k: v for k, v in data.items() if k not in {"cos", "retention", "database"}},
            cos=CosTarget(**data["cos"]),
            retention=Policy(**data["retention"]),
            database=ManagedDatabase(**data["database"]) if data.get("database") else None,
        )

    @classmethod
    def load(cls, path: Path) -> HostSettings:
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BackupError(f"{path} not found: enable [backup] in the config and run inv bootstrap") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupError(f"{path}: unreadable ({exc}): run inv bootstrap again") from None
