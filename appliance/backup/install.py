"""What bootstrap puts on a host for backups: tools, the code as one zipapp, the settings, the cron entry.

The backup code runs on the host's own python3 (a CVM in mainland China reaches no PyPI): the COS
SDK's dependencies come from the distribution (python3-requests, -crcmod, -xmltodict, -six), age from
its package, and the SDK itself (pure Python) travels inside `BASE/lib/backup.pyz` with the
appliance.backup modules, over the same SSH connection as every other file.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import qcloud_cos

from appliance.backup.cos import MB, CosTarget
from appliance.backup.settings import HostSettings, ManagedDatabase, Policy
from appliance.config import Config
from appliance.errors import ConfigError
from appliance.render import POSTGRES_CA, data_ca_files, render_template
from appliance.secrets import COS_SECRETS, load_secrets
from appliance.shell import sh
from appliance.steps import Action, ConfigFiles, Converge, Directory, Facts, ManagedFile, Packages, Step

HOST_PACKAGES = ("age", "python3", "python3-crcmod", "python3-requests", "python3-six", "python3-xmltodict")
BACKUP_MODULES = Path(__file__).resolve().parent
# The wall between the two sides: these modules run on the host, inside the zipapp, on the distribution's python3
# (stdlib, the COS SDK and its distribution packages only); the rest of appliance/backup (this module and
# operate.py) runs on the operator's machine. tests/appliance/test_backup_boundary.py keeps the list whole.
HOST_MODULES = (
    "__init__.py", "__main__.py", "cos.py", "crypt.py", "dump.py", "errors.py", "manifest.py", "metrics.py",
    "retention.py", "runner.py", "settings.py", "store.py", "wal.py",
)  # fmt: skip
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed, so the same code makes the same bytes (and bootstrap says ok)


def bundle() -> bytes:
    """A zipapp of appliance.backup and the COS SDK, byte-for-byte reproducible."""
    sources: dict[str, bytes] = {
        "__main__.py": b"from appliance.backup.__main__ import main\n\nmain()\n",
        "appliance/__init__.py": b"",
        "appliance/host_paths.py": (BACKUP_MODULES.parent / "host_paths.py").read_bytes(),
    }
    for name in HOST_MODULES:
        sources[f"appliance/backup/{name}"] = (BACKUP_MODULES / name).read_bytes()
    sdk = Path(qcloud_cos.__file__).resolve().parent
    for path in sorted(sdk.glob("*.py")):
        sources[f"qcloud_cos/{path.name}"] = path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(sources.items()):
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def host_settings(config: Config, secrets: Mapping[str, str]) -> HostSettings:
    """The settings file for the host, from the config and the COS keys in the secrets."""
    settings = config.settings
    backup = settings.backup
    missing = [name for name in COS_SECRETS if not secrets.get(name)]
    if missing:
        raise ConfigError(f"{config.secrets_path}: backups are enabled: set {' and '.join(missing)} (a COS API key)")
    return HostSettings(
        name=settings.name,
        base_dir=settings.base_dir,
        host=settings.hosts[0].address,
        prefix=backup.prefix,
        recipient=backup.age_recipient or "",
        cos=CosTarget(
            bucket=backup.cos_bucket or "",
            region=backup.cos_region,
            secret_id=secrets["COS_SECRET_ID"],
            secret_key=secrets["COS_SECRET_KEY"],
            endpoint=backup.cos_endpoint,
            part_size=backup.part_size_mb * MB,
        ),
        retention=Policy(backup.retention.daily, backup.retention.weekly, backup.retention.monthly),
        pitr=backup.pitr,
        database=managed_database(config, secrets),
        managed_redis=f"{settings.redis.host}:{settings.redis.port}" if settings.redis else None,
    )


def managed_database(config: Config, secrets: Mapping[str, str]) -> ManagedDatabase | None:
    """What the host's backup needs to dump a managed database as the API reaches it (its sslmode and CA), as the
    role that owns the tables: the migration role when there is one, else `user`. None for the stack's own."""
    database = config.settings.database
    if database is None:
        return None
    user, secret = (
        (database.migration_user, "DATABASE_MIGRATION_PASSWORD")
        if database.migration_user
        else (database.user, "DATABASE_PASSWORD")
    )
    if not secrets.get(secret):
        raise ConfigError(
            f"{config.secrets_path}: backups dump the managed database as {user}: set {secret} in that file"
        )
    ca = next((file.content for file in data_ca_files(config, "") if file.path.endswith(f"/{POSTGRES_CA}")), None)
    return ManagedDatabase(
        host=database.host,
        port=database.port,
        name=database.name,
        user=user,
        password=secrets[secret],
        sslmode=database.sslmode,
        ca_pem=ca,
        image=config.settings.images.postgres,
    )


@dataclass(frozen=True)
class UnshownFile:
    """A managed file `inv render` leaves out: binary (the zipapp) or holding secrets (the settings)."""

    path: str
    content: bytes
    mode: int

    @property
    def name(self) -> str:
        return f"file {self.path}"

    def written_files(self) -> tuple[ManagedFile, ...]:
        return ()  # the bytes are binary or secret: render leaves them out

    def _file(self) -> ManagedFile:
        return ManagedFile(self.path, self.content, self.mode)

    def probes(self) -> Mapping[str, str]:
        return self._file().probes()

    def plan(self, facts: Facts) -> list[Action]:
        return self._file().plan(facts)


def backup_steps(config: Config) -> list[Step]:
    """With backups enabled: the packages, the zipapp and the settings (0600: they hold the COS key)."""
    settings = config.settings
    if not settings.backup.enabled:
        return []
    secrets = {name: secret.reveal() for name, secret in load_secrets(config.secrets_path).values.items()}
    host = host_settings(config, secrets)
    return [
        Packages("backup tools", HOST_PACKAGES),
        UnshownFile(settings.paths.backup_bundle, bundle(), 0o644),
        UnshownFile(settings.paths.backup_settings, host.to_json().encode(), 0o600),
        *wal_push_steps(config),
    ]


def wal_push_steps(config: Config) -> list[Step]:
    """backup.pitr: the spool PostgreSQL archives into and the path unit that sends it to COS; else neither unit."""
    settings = config.settings
    name, base = settings.name, settings.base_dir
    units = [f"/etc/systemd/system/{name}-wal-push.{kind}" for kind in ("path", "service")]
    if not settings.backup.pitr:
        return [
            Converge(
                "WAL archiving off",
                sh("test", "!", "-e", units[0]),
                f"systemctl disable --now {sh(f'{name}-wal-push.path')}; rm -f {sh(*units)} && systemctl daemon-reload",
                "remove the WAL push units",
            )
        ]
    context = {"header": "Managed by cvm-appliance (inv bootstrap).", "name": name, "base_dir": base,
               "spool": settings.paths.wal_spool}  # fmt: skip
    files = tuple(
        ManagedFile(unit, render_template(f"systemd/wal-push.{kind}.j2", context).encode())
        for unit, kind in zip(units, ("path", "service"), strict=True)
    )
    path_unit = sh(f"{name}-wal-push.path")
    return [
        # The server (its own uid) must pass through to the subfolders it owns; nobody else may list it.
        Directory(settings.paths.wal_spool, 0o711),
        ConfigFiles("WAL push units", files, "systemctl daemon-reload", "reload systemd"),
        Converge(
            "WAL push watching",
            f"systemctl is-enabled --quiet {path_unit} && systemctl is-active --quiet {path_unit}",
            f"systemctl enable --now {path_unit}",
            "watch the WAL spool",
        ),
    ]
