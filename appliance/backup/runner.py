"""Backup, list, restore, drill and prune on the host: the edges (docker, age, COS) put in order.

A backup is committed by its manifest, uploaded last: a run that fails half-way leaves objects
without a manifest, which `inv backups` shows as incomplete and pruning removes after a day.
Temporary files live in one work folder under BASE/shared/backups, removed whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from appliance.backup import crypt, dump, wal
from appliance.backup.cos import CosStore, new_crc64, parse_time
from appliance.backup.errors import BackupError, DeleteRefused
from appliance.backup.manifest import FULL, MANIFEST, REDIS, VERIFIED, Manifest, Part, backup_id, id_time
from appliance.backup.retention import Decision, Stored, decide, horizon_days
from appliance.backup.settings import HostSettings
from appliance.backup.store import BackupStore
from appliance.host_paths import HostPaths

STALE_UPLOAD_SECONDS = 24 * 3600
RECOVERY_SECONDS = 1800  # replaying a day of WAL on a small CVM
LATEST = "latest"  # the local copy of the newest backup


def host_state(paths: HostPaths) -> list[str]:
    """What a full backup keeps of the host's own state (releases, certificates, history), relative to BASE."""
    kept = (paths.releases, paths.current, paths.certs, paths.history, paths.audit_log, paths.host_record)
    return [paths.below_base(path) for path in kept]


@dataclass(frozen=True)
class Listed:
    id: str
    created: datetime
    complete: bool
    verified: bool
    size: int
    scope: str


def _encrypted_digest(path: Path) -> tuple[str, int, str]:
    digest, crc, size = hashlib.sha256(), new_crc64(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(4 * 1024 * 1024):
            digest.update(chunk)
            crc.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size, str(crc.crcValue)


@dataclass(frozen=True)
class Pruned:
    decision: Decision
    refused: str  # why nothing was deleted, when COS refused ("" otherwise)


class Runner:
    def __init__(
        self,
        settings: HostSettings,
        log: Callable[[str], None] = print,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.settings = settings
        self.log = log
        self.clock = clock
        self.store: BackupStore = CosStore(settings.cos, log=log)
        self.archive = wal.Archive(self.store, settings.key_prefix)

    def _key(self, identifier: str, name: str) -> str:
        return f"{self.settings.key_prefix}{identifier}/{name}"

    def _work(self, label: str) -> Path:
        folder = self.settings.backups_dir / f"work-{label}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(mode=0o700, parents=True)
        return folder

    # backup

    def backup(self, reason: str, scope: str = FULL) -> Manifest:
        """PostgreSQL, Redis, artifacts and the appliance's state (FULL), or Redis alone (REDIS)."""
        full = scope == FULL
        managed_redis, database = self.settings.managed_redis, self.settings.database
        if managed_redis and not full:
            raise BackupError(
                f"backup --only redis: Redis is managed ({managed_redis}) and TencentDB for Redis's own snapshots back "
                "it up: remove backup.redis_schedule and run inv bootstrap"
            )
        if database is not None and self.settings.pitr:
            raise BackupError(f"backup.pitr: {database.target} is managed: TencentDB's point-in-time restore covers it")
        started = time.monotonic()
        self.store.check_bucket()
        now = self.clock()
        identifier = backup_id(now)
        project = self.settings.name
        work = self._work(identifier)
        uploaded: list[str] = []
        try:
            pg = self._postgres(work) if full or database is None else None
            plain: dict[str, Path] = {}
            tables: dict[str, int] = {}
            files: dict[str, str] = {}
            system_id = wal_start = base_end = None
            if full:
                plain["postgres"] = work / "postgres.dump"
                assert pg is not None
                dump.dump_postgres(pg, plain["postgres"])
                tables = dump.dump_row_counts(pg, plain["postgres"])
            if full and self.settings.pitr:
                assert isinstance(pg, dump.StackPostgres)
                postgres = pg.container
                plain["base"] = work / "base.tar.gz"
                label = dump.base_backup(postgres, plain["base"])
                system_id, wal_start = dump.system_id(postgres), wal.start_segment(label)
                # Real time, not self.clock: a recovery target is compared with commit times.
                base_end = datetime.now(timezone.utc).isoformat()
            versions: dict[str, str] = {}
            if pg is not None:
                versions["postgres"] = dump.psql(pg, "SHOW server_version").strip()
            keys, sample, skipped = 0, dict[str, str](), dict[str, str]()
            if managed_redis:
                skipped["redis"] = f"managed Redis at {managed_redis}: TencentDB for Redis's own snapshots cover it"
            else:
                redis = dump.service_container(project, "redis")
                plain["redis"] = work / "redis.rdb"
                keys, sample = dump.snapshot_redis(redis, plain["redis"])
                aof_on, aof_dir, _ = dump.redis_aof(redis)
                if aof_on:
                    plain["redis-aof"] = work / "redis-aof.tar"
                    dump.tar_folder(dump.volume_path(f"{project}_redisdata"), plain["redis-aof"], [aof_dir])
                versions["redis"] = dump.redis_cli(redis, "INFO", "server").split("redis_version:")[1].split()[0]
            paths = self.settings.paths
            base = Path(paths.base)
            if full:
                artifacts = dump.volume_path(f"{project}_artifacts")
                plain["files"] = work / "files.tar"
                dump.tar_folder(artifacts, plain["files"])
                files = dump.file_hashes(artifacts)
                plain["state"] = work / "state.tar"
                dump.tar_folder(base, plain["state"], [item for item in host_state(paths) if (base / item).exists()])
            parts = []
            for name, path in plain.items():
                sha, size = dump.sha256_of(path)
                sealed = path.with_name(path.name + ".age")
                crypt.encrypt(path, sealed, self.settings.recipient)
                path.unlink()
                encrypted_sha, encrypted_size, crc = _encrypted_digest(sealed)
                parts.append(Part(name, sealed.name, size, sha, encrypted_size, encrypted_sha, crc))
            for part in parts:
                key = self._key(identifier, part.object)
                uploaded.append(key)
                remote_crc = self._upload(key, work / part.object)
                if remote_crc != part.crc64:
                    raise BackupError(f"{key}: CRC64 changed between encryption and upload")
            manifest = Manifest(
                id=identifier,
                created=now.isoformat(timespec="seconds"),
                host=self.settings.host or socket.gethostname(),
                name=project,
                reason=reason,
                release=_current_release(paths),
                versions=versions,
                parts=parts,
                tables=tables,
                redis_keys=keys,
                redis_sample=sample,
                files=files,
                seconds=round(time.monotonic() - started, 3),
                scope=scope,
                system_id=system_id,
                wal_start=wal_start,
                base_end=base_end,
                database=database.target if database is not None else None,
                skipped=skipped,
            )
            (work / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
            self.store.put_bytes(self._key(identifier, MANIFEST), manifest.to_json().encode())
            self._keep_local_copy(work)
            return manifest
        except BaseException:
            if uploaded:  # objects without a manifest: not a backup; remove them now if COS lets us
                try:
                    self.store.delete(uploaded)
                    self.store.abort_stale_uploads(self._key(identifier, ""), 0, self.clock() + timedelta(minutes=1))
                except BackupError as exc:
                    self.log(f"warning: could not remove the failed backup's objects ({exc}); retention will")
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _postgres(self, work: Path) -> dump.Postgres:
        """The database's tools: in the stack's container, or a client container for the managed database (its
        passfile and CA in `work`, removed with it)."""
        if self.settings.database is not None:
            return dump.client_postgres(self.settings.database, work)
        return dump.StackPostgres(dump.service_container(self.settings.name, "postgres"))

    def _upload(self, key: str, path: Path) -> str:
        """put_file, and once more if it gave up: the second try resumes the multipart upload."""
        try:
            return self.store.put_file(key, path)
        except BackupError as exc:
            if "CRC64" in str(exc):
                raise
            self.log(f"upload of {key} gave up ({exc}); resuming it once")
            return self.store.put_file(key, path)

    def _keep_local_copy(self, work: Path) -> None:
        latest = self.settings.backups_dir / LATEST
        staging = self.settings.backups_dir / f"{LATEST}.new"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        for path in work.iterdir():
            if path.suffix == ".age" or path.name == MANIFEST:
                path.rename(staging / path.name)
        shutil.rmtree(latest, ignore_errors=True)
        staging.rename(latest)

    def wal_push(self) -> list[str]:
        """Archive what PostgreSQL left in the spool (the systemd path unit runs this)."""
        work = self._work("wal")
        try:
            project = self.settings.name
            return self.archive.push(
                self.settings.wal_spool, self.settings.recipient, work,
                lambda: dump.system_id(dump.service_container(project, "postgres")),
            )  # fmt: skip
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # list and prune

    def stored(self) -> list[Listed]:
        groups: dict[str, dict[str, int]] = {}
        for item in self.store.objects(self.settings.key_prefix):
            identifier, _, name = item.key[len(self.settings.key_prefix) :].partition("/")
            groups.setdefault(identifier, {})[name] = item.size
        listed = []
        for identifier, names in sorted(groups.items()):
            created = id_time(identifier)
            if created is not None:
                size = sum(size for name, size in names.items() if name.endswith(".age"))
                scope = FULL if "postgres.dump.age" in names else REDIS
                listed.append(Listed(identifier, created, MANIFEST in names, VERIFIED in names, size, scope))
        return listed

    def prune(self, dry_run: bool) -> Pruned:
        """The retention policy applied (not with `dry_run`). A key that may not delete (inv cos.setup's CAM
        policy) is not a failure: the bucket's lifecycle rule expires old objects instead; the result says so."""
        listed = self.stored()
        decision = decide([Stored(b.id, b.created, b.complete, b.verified, b.scope) for b in listed], self.clock(),
                          self.settings.retention)  # fmt: skip
        refused = ""
        if not dry_run:
            doomed = set(decision.delete)
            keys = [
                item.key
                for item in self.store.objects(self.settings.key_prefix)
                if item.key[len(self.settings.key_prefix) :].split("/")[0] in doomed
            ]
            try:
                if keys:
                    self.store.delete(keys)
                self._prune_wal(listed, decision)
            except DeleteRefused:
                days = horizon_days(self.settings.retention)
                refused = (
                    "COS refused the deletes (AccessDenied: the host's key has no delete, as inv cos.setup's policy "
                    f"says); the bucket's lifecycle rule expires them after {days} days"
                )
            self.store.abort_stale_uploads(self.settings.key_prefix, STALE_UPLOAD_SECONDS, self.clock())
        return Pruned(decision, refused)

    def _prune_wal(self, listed: list[Listed], decision: Decision) -> int:
        """WAL no kept base backup can replay: of each cluster, the segments before its oldest kept base
        backup's first one; of a cluster with no kept base backup, all of it once it is older than the
        oldest kept backup (the WAL of a cluster wiped and restored over). Returns how many went."""
        kept = [b for b in listed if b.id in set(decision.keep) and b.complete and b.scope == FULL]
        starts: dict[str, str] = {}
        for backup in kept:
            manifest = self.manifest(backup.id)
            if manifest.system_id and manifest.wal_start:
                current = starts.get(manifest.system_id, manifest.wal_start)
                starts[manifest.system_id] = min(current, manifest.wal_start, key=lambda n: wal.position(n) or "")
        oldest = min((b.created for b in kept), default=None)
        deleted = 0
        for system, names in self.archive.listing().items():
            if system in starts:
                doomed = wal.expired(names, starts[system])
            else:
                times = [t for t in (parse_time(m) for m in names.values()) if t is not None]
                doomed = sorted(names) if oldest is not None and times and max(times) < oldest else []
            if doomed:
                self.archive.delete(system, doomed)
                deleted += len(doomed)
        return deleted

    # restore and drill

    def manifest(self, identifier: str) -> Manifest:
        try:
            return Manifest.from_json(self.store.get_bytes(self._key(identifier, MANIFEST)).decode())
        except BackupError as exc:
            if "NoSuchKey" in str(exc):
                raise BackupError(f"backup {identifier} has no manifest in COS: see inv backups") from None
            raise

    def latest_id(self) -> str:
        """The newest complete full backup (Redis-only ones are not what a drill proves)."""
        complete = [b for b in self.stored() if b.complete and b.scope == FULL]
        if not complete:
            raise BackupError(f"no complete backup under cos://{self.settings.cos.bucket}/{self.settings.key_prefix}")
        return complete[-1].id

    def _fetch(self, manifest: Manifest, identity: str, work: Path) -> dict[str, Path]:
        """Every part, checked (SHA-256 of the encrypted and of the decrypted bytes) and decrypted."""
        local = self.settings.backups_dir / LATEST
        plain: dict[str, Path] = {}
        for part in manifest.parts:
            sealed = work / part.object
            copy = local / part.object
            if copy.is_file() and dump.sha256_of(copy) == (part.encrypted_sha256, part.encrypted_size):
                shutil.copyfile(copy, sealed)
            else:
                self.store.get_file(self._key(manifest.id, part.object), sealed)
            if dump.sha256_of(sealed) != (part.encrypted_sha256, part.encrypted_size):
                raise BackupError(f"backup {manifest.id}: {part.object} is corrupt (SHA-256 differs from the manifest)")
            target = work / part.object.removesuffix(".age")
            crypt.decrypt(sealed, target, identity)
            sealed.unlink()
            if dump.sha256_of(target) != (part.sha256, part.size):
                raise BackupError(f"backup {manifest.id}: {part.name} decrypted to other bytes than were backed up")
            plain[part.name] = target
        return plain

    def _fetch_wal(self, manifest: Manifest, identity: str, work: Path) -> tuple[Path, int]:
        """Every archived file a recovery from `manifest`'s base backup may read, decrypted into a folder
        (a damaged one fails naming it); (the folder, how many)."""
        archived = self.archive.listing().get(manifest.system_id or "", {})
        names = wal.needed(archived, manifest.wal_start or "")
        self.archive.fetch(manifest.system_id or "", names, identity, work / "wal", work)
        return work / "wal", len(names)

    def drill(self, identifier: str | None, identity: str, to_time: datetime | None = None) -> tuple[str, datetime]:
        """Restore into throwaway containers, compare with the manifest, mark verified if all agree;
        (the line, when the verified backup was taken). With `to_time`, the backup is that of the newest base
        backup before it (or `identifier`'s) and its base backup is also replayed to that moment."""
        if to_time is not None:
            manifest = self.manifest(identifier) if identifier else self.base_before(to_time)
            if not manifest.base_end:
                raise BackupError(f"backup {manifest.id} has no base backup (taken without backup.pitr)")
        else:
            manifest = self.manifest(identifier or self.latest_id())
        identifier = manifest.id
        started = time.monotonic()
        project = self.settings.name
        work = self._work(f"drill-{identifier}")
        try:
            plain = self._fetch(manifest, identity, work)
            replayed = ""
            if to_time is not None:
                folder, count = self._fetch_wal(manifest, identity, work)
                postgres = dump.service_container(project, "postgres")
                stat = dump.volume_path(f"{project}_pgdata").stat()  # the image's postgres user owns it
                last, at_time = dump.drill_replay(
                    project, dump.image_of(postgres), plain["base"], folder, to_time.isoformat(), work,
                    (stat.st_uid, stat.st_gid), list(manifest.tables), RECOVERY_SECONDS,
                )  # fmt: skip
                # Rows at that moment are not the manifest's (the WAL moved them on): every table is read, not compared.
                replayed = (
                    f"; its base backup and {count} archived WAL files replayed to {to_time.isoformat()} (last commit "
                    f"{last or 'none'}: {len(at_time)} tables, {sum(at_time.values())} rows)"
                )
            problems: list[str] = []
            counts: dict[str, int] = {}
            if "postgres" in plain:
                database = self.settings.database
                postgres_image = (
                    database.image if database else dump.image_of(dump.service_container(project, "postgres"))
                )
                counts = dump.drill_postgres(project, postgres_image, plain["postgres"], list(manifest.tables))
            if counts != manifest.tables:
                differ = sorted(
                    t for t in set(counts) | set(manifest.tables) if counts.get(t) != manifest.tables.get(t)
                )
                problems.append(f"row counts differ in {', '.join(differ[:5])}")
            keys = 0
            if "redis" in plain:
                redis_image = dump.image_of(dump.service_container(project, "redis"))
                keys, wrong = dump.drill_redis(project, redis_image, plain["redis"], manifest.redis_sample, work)
                if keys != manifest.redis_keys:
                    problems.append(f"redis has {keys} keys, the manifest {manifest.redis_keys}")
                if wrong:
                    problems.append(f"redis sample keys missing or changed: {', '.join(wrong[:5])}")
                redis_said = f"{keys} redis keys"
            else:
                redis_said = "redis skipped"
                why = manifest.skipped.get("redis", "the backup has no Redis part")
                self.log(f"drill of {identifier}: Redis skipped, it is not part of this backup ({why})")
            files = work / "files"
            if "files" in plain:
                dump.untar(plain["files"], files)
            if dump.file_hashes(files) != manifest.files:
                problems.append("artifact files differ from the manifest's hashes")
            if problems:
                raise BackupError(f"drill of {identifier} failed: {'; '.join(problems)}")
            seconds = time.monotonic() - started
            record = {
                "id": identifier,
                "drilled": self.clock().isoformat(timespec="seconds"),
                "seconds": round(seconds, 3),
                "tables": len(counts),
                "rows": sum(counts.values()),
                "redis_keys": keys,
                "files": len(manifest.files),
                **({"to_time": to_time.isoformat()} if to_time is not None else {}),
            }
            self.store.put_bytes(self._key(identifier, VERIFIED), (json.dumps(record) + "\n").encode())
            line = (
                f"drill of {identifier} passed in {seconds:.1f}s: {len(counts)} tables, {sum(counts.values())} rows, "
                f"{redis_said}, {len(manifest.files)} files match{replayed}; marked verified"
            )
            return line, datetime.fromisoformat(manifest.created)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def base_before(self, moment: datetime, exclude: str | None = None) -> Manifest:
        """The newest full backup whose base backup ended before `moment` (a recovery starts there), but
        `exclude`: the pre-restore backup of this very restore holds what is being replaced."""
        for backup in reversed(self.stored()):
            if backup.complete and backup.scope == FULL and backup.created <= moment and backup.id != exclude:
                manifest = self.manifest(backup.id)
                if manifest.base_end and datetime.fromisoformat(manifest.base_end) <= moment:
                    return manifest
        raise BackupError(
            f"no base backup ended before {moment.isoformat()}: point-in-time recovery starts from a full backup "
            "taken with backup.pitr = true (see inv backups)"
        )

    def restore(
        self, identifier: str | None, identity: str, to_time: datetime | None = None, exclude: str | None = None
    ) -> str:
        """Put a backup back into the running stack: APIs stopped, PostgreSQL, Redis, artifacts, APIs started.
        With `to_time`, PostgreSQL is that backup's base backup (default: the newest that ended before, but
        `exclude`) with the archived WAL replayed up to that moment; Redis and the artifacts come from it too."""
        if to_time is not None and self.settings.database is not None:
            raise BackupError(
                f"restore --to-time: {self.settings.database.target} is managed: restore it to a point in time with "
                "TencentDB's own point-in-time restore (docs/backups.md)"
            )
        if identifier is not None:
            manifest = self.manifest(identifier)
            if to_time is not None and not manifest.base_end:
                raise BackupError(f"backup {identifier} has no base backup (taken without backup.pitr)")
        elif to_time is not None:
            manifest = self.base_before(to_time, exclude)
        else:
            raise BackupError("restore needs a backup id or a time to restore to")
        identifier = manifest.id
        project = self.settings.name
        work = self._work(f"restore-{identifier}")
        try:
            plain = self._fetch(manifest, identity, work)  # every check before the first change
            if to_time is not None:  # the WAL too: a damaged segment fails here, before the first change
                self._fetch_wal(manifest, identity, work)
            reached = ""
            pg = self._postgres(work)
            local_redis = self.settings.managed_redis is None and "redis" in plain
            redis = dump.service_container(project, "redis") if local_redis else None
            apis = dump.api_containers(project)
            if apis:
                dump.docker("stop", *apis, what="stopping the API")
            try:
                if to_time is not None:
                    assert isinstance(pg, dump.StackPostgres)
                    postgres = pg.container
                    dump.docker("stop", postgres, what="stopping postgres")
                    pgdata = dump.volume_path(f"{project}_pgdata")
                    moment = to_time.isoformat()
                    on_time = dump.replay(postgres, pgdata, plain["base"], work / "wal", moment, RECOVERY_SECONDS)
                    reached = moment if on_time else f"the end of its archived WAL (which ends before {moment})"
                elif "postgres" in plain:
                    dump.restore_postgres(pg, plain["postgres"], clean=True)
                if redis is not None:
                    aof = dump.redis_aof(redis)
                    data_dir = dump.volume_path(f"{project}_redisdata")
                    dump.docker("stop", redis, what="stopping redis")
                    dump.place_rdb(data_dir, plain["redis"], aof)
                    dump.docker("start", redis, what="starting redis")
                    dump.wait_for_redis(redis)
                artifacts = dump.volume_path(f"{project}_artifacts")
                if "files" in plain:
                    dump.empty_folder(artifacts)
                    dump.untar(plain["files"], artifacts)
                # Checked before the API is back: it would start writing. A Redis-only backup leaves the rest.
                counts = dump.table_counts(pg, list(manifest.tables))
                keys = int(dump.redis_cli(redis, "DBSIZE")) if redis is not None else 0
                files_match = "files" not in plain or dump.file_hashes(artifacts) == manifest.files
            finally:
                if apis:
                    dump.docker("start", *apis, what="starting the API again")
            problems = []
            if counts != manifest.tables and to_time is None:  # WAL replayed past the backup moves them on
                problems.append("row counts differ from the manifest")
            if redis is not None and keys != manifest.redis_keys:
                problems.append(f"redis has {keys} keys, the manifest {manifest.redis_keys}")
            if not files_match:
                problems.append("artifact files differ from the manifest")
            if problems:
                raise BackupError(f"restore of {identifier} finished but does not match: {'; '.join(problems)}")
            current = _current_release(self.settings.paths)
            note = ""
            if manifest.release and current and manifest.release != current:
                note = f" (taken under release {manifest.release}; {current} serves: the schema is now the older one's)"
            replayed = f", PostgreSQL recovered to {reached}" if reached else ""
            redis_said = f"{keys} redis keys" if redis is not None else _redis_left(self.settings, manifest)
            return (
                f"restored {identifier} ({manifest.scope}){replayed}: {len(counts)} tables, {sum(counts.values())} "
                f"rows, {redis_said}, {len(manifest.files)} files{note}"
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _redis_left(settings: HostSettings, manifest: Manifest) -> str:
    """Why a restore left Redis as it was."""
    if settings.managed_redis:
        return f"redis left as it is (managed: {settings.managed_redis})"
    return f"redis left as it is ({manifest.skipped.get('redis', 'the backup has no Redis part')})"


def _current_release(paths: HostPaths) -> str | None:
    current = Path(paths.current)
    return current.resolve().name if current.is_symlink() else None
