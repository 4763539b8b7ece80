"""The stack's data through `docker` on the host: dumps out, restores in, throwaway copies for drills.

The tools run inside the stack's own containers (pg_dump of the server's own version, the server's
redis-cli), or for a managed database in a client container of the stack's postgres image, so the host
needs nothing but Docker. Each failure is one `BackupError` line.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from appliance.backup.errors import BackupError
from appliance.backup.manifest import count_copy_rows
from appliance.backup.settings import ManagedDatabase

PG_USER = "appliance"  # compose/postgres.env.j2
PG_DB = "appliance"
_REDIS_CLI = 'REDISCLI_AUTH="$REDIS_PASSWORD" exec redis-cli "$@"'


def failure(returncode: int, stderr: bytes) -> str:
    """Why a tool failed: its last error line, else the signal that killed it, else its status."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    if lines:
        return lines[-1][-300:]
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit {returncode}"


def docker(*args: str, stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None, what: str = "") -> str:
    """Run `docker ARGS`; its output (unless sent to `stdout`), or one line saying what failed."""
    done = subprocess.run(
        ["docker", *args], stdin=stdin, stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE, check=False
    )
    if done.returncode != 0:
        raise BackupError(f"{what or 'docker ' + args[0]} failed: {failure(done.returncode, done.stderr)}")
    return "" if stdout is not None else done.stdout.decode(errors="replace")


def service_container(project: str, service: str) -> str:
    """The running container of a Compose service of `project` (Compose v1 or v2 alike)."""
    found = docker(
        "ps", "-q",
        "--filter", f"label=com.docker.compose.project={project}",
        "--filter", f"label=com.docker.compose.service={service}",
    ).split()  # fmt: skip
    if not found:
        raise BackupError(f"the stack's {service} container (project {project}) is not running: start the stack")
    return found[0]


def api_containers(project: str) -> list[str]:
    """Running API containers of every release (projects PROJECT-api-*)."""
    lines = docker(
        "ps", "--filter", "label=com.docker.compose.service=api",
        "--format", '{{.ID}} {{.Label "com.docker.compose.project"}}',
    ).splitlines()  # fmt: skip
    return [
        line.split()[0] for line in lines if len(line.split()) == 2 and line.split()[1].startswith(f"{project}-api-")
    ]


def volume_path(volume: str) -> Path:
    return Path(docker("volume", "inspect", "--format", "{{.Mountpoint}}", volume, what=f"volume {volume}").strip())


def image_of(container: str) -> str:
    return docker("inspect", "--format", "{{.Config.Image}}", container).strip()


# PostgreSQL: where its tools run

PASSFILE_IN = "/run/appliance/pgpass"  # in the client container, read-only
CA_IN = "/run/appliance/postgres-ca.pem"
CONNECT_TIMEOUT = 15  # seconds: an unreachable managed database fails the backup, not hangs it


@dataclass(frozen=True)
class StackPostgres:
    """The stack's own server: its tools run inside its container (`docker exec`), as the stack's role."""

    container: str

    def command(self, tool: str, *args: str, connect: bool = True, stdin: bool = False) -> list[str]:
        login = ["-U", PG_USER, "-d", PG_DB] if connect else []
        return ["exec", *(["-i"] if stdin else []), self.container, tool, *login, *args]

    def what(self, tool: str) -> str:
        return tool


@dataclass(frozen=True)
class ClientPostgres:
    """A managed server: its tools run in a short-lived client container of the stack's postgres image, with libpq's
    settings in its environment (the API's sslmode and CA), the CA and a 0600 passfile mounted read-only: the
    password is in no argv, no environment and no world-readable file."""

    database: ManagedDatabase
    passfile: Path
    ca: Path | None

    def command(self, tool: str, *args: str, connect: bool = True, stdin: bool = False) -> list[str]:
        db = self.database
        login = ["-d", db.name] if connect else []  # pg_restore reads no PGDATABASE: it would print SQL instead
        settings = {
            "PGHOST": db.host, "PGPORT": str(db.port), "PGDATABASE": db.name, "PGUSER": db.user,
            "PGSSLMODE": db.sslmode, "PGPASSFILE": PASSFILE_IN, "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
            "PGAPPNAME": "appliance-backup", **({"PGSSLROOTCERT": CA_IN} if self.ca is not None else {}),
        }  # fmt: skip
        mounts = [f"{self.passfile}:{PASSFILE_IN}:ro", *([f"{self.ca}:{CA_IN}:ro"] if self.ca is not None else [])]
        return [
            "run", "--rm", *(["-i"] if stdin else []), "--network", "host",
            *(item for name, value in settings.items() for item in ("-e", f"{name}={value}")),
            *(item for mount in mounts for item in ("-v", mount)),
            db.image, tool, *login, *args,
        ]  # fmt: skip

    def what(self, tool: str) -> str:
        return f"{tool} of {self.database.target}"


Postgres = StackPostgres | ClientPostgres


def pgpass_line(database: ManagedDatabase) -> str:
    """The passfile's one line (libpq's format: `:` and `\\` escaped in each field)."""
    fields = (database.host, str(database.port), database.name, database.user, database.password)
    return ":".join(field.replace("\\", "\\\\").replace(":", "\\:") for field in fields) + "\n"


def client_postgres(database: ManagedDatabase, folder: Path) -> ClientPostgres:
    """The passfile (0600 from its creation) and the CA written into `folder` (the run's own 0700 work folder,
    removed with it), and the client that mounts them."""
    passfile = folder / "pgpass"
    descriptor = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(pgpass_line(database))
    ca = None
    if database.ca_pem is not None:
        ca = folder / "postgres-ca.pem"
        ca.write_text(database.ca_pem, encoding="utf-8")
    return ClientPostgres(database, passfile, ca)


# PostgreSQL


def dump_postgres(pg: Postgres, target: Path) -> None:
    """A consistent custom-format dump from the running server (pg_dump's own snapshot; no downtime)."""
    with target.open("wb") as out:
        docker(*pg.command("pg_dump", "-Fc"), stdout=out, what=pg.what("pg_dump"))


def dump_row_counts(pg: Postgres, dump: Path) -> dict[str, int]:
    """Rows per table, read from the dump itself (so they are the dump's, not the live server's)."""
    with dump.open("rb") as source:
        process = subprocess.Popen(
            ["docker", *pg.command("pg_restore", "--data-only", "-f", "-", connect=False, stdin=True)],
            stdin=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        counts = count_copy_rows(line.decode(errors="replace") for line in process.stdout)
        _, error = process.communicate()
    if process.returncode != 0:
        raise BackupError(f"reading the dump back failed: {failure(process.returncode, error)}")
    return counts


def psql(pg: Postgres, sql: str) -> str:
    return docker(*pg.command("psql", "-tAXq", "-c", sql), what=pg.what("psql"))


def table_counts(pg: Postgres, tables: list[str]) -> dict[str, int]:
    """Exact rows per table now (the tables named by a manifest)."""
    if not tables:
        return {}
    ordered = sorted(tables)
    # Names as pg_dump printed them: already-quoted SQL identifiers; rows come back by position.
    query = " UNION ALL ".join(f"SELECT {n}, count(*) FROM {t}" for n, t in enumerate(ordered))  # noqa: S608
    rows = (line.split("|") for line in psql(pg, query).splitlines() if "|" in line)
    return {ordered[int(n)]: int(count) for n, count in rows}


def restore_postgres(pg: Postgres, dump: Path, clean: bool, privileges: bool = True) -> None:
    """The dump into the server, in one transaction; without `privileges`, its GRANTs and default privileges left
    out (a drill's throwaway server has none of the roles they name)."""
    options = [*(["--clean", "--if-exists"] if clean else []), *([] if privileges else ["--no-acl"])]
    with dump.open("rb") as source:
        docker(
            *pg.command("pg_restore", "--no-owner", "--single-transaction", "--exit-on-error", *options, stdin=True),
            stdin=source, what=pg.what("pg_restore"),
        )  # fmt: skip


# Redis


def redis_cli(container: str, *args: str) -> str:
    return docker("exec", container, "sh", "-c", _REDIS_CLI, "sh", *args, what=f"redis-cli {args[0]}").strip()


def _redis_info(container: str) -> dict[str, str]:
    lines = redis_cli(container, "INFO", "persistence").splitlines()
    return dict(line.strip().split(":", 1) for line in lines if ":" in line)


def snapshot_redis(container: str, target: Path, timeout: float = 600) -> tuple[int, dict[str, str]]:
    """BGSAVE, wait until that save finished successfully, copy the RDB; (DBSIZE, a sample key → type)."""
    keys = int(redis_cli(container, "DBSIZE"))
    sample: dict[str, str] = {}
    for _ in range(5):
        key = redis_cli(container, "RANDOMKEY")
        if key and redis_cli(container, "TTL", key) == "-1":
            sample[key] = redis_cli(container, "TYPE", key)
    deadline = time.monotonic() + timeout
    while True:  # a save already running (cron's own "save" points) is waited out, then ours starts
        saves = int(_redis_info(container).get("rdb_saves", "0"))
        try:
            if "started" in redis_cli(container, "BGSAVE"):
                break
        except BackupError as exc:
            if "in progress" not in str(exc):
                raise
        if time.monotonic() > deadline:
            raise BackupError("redis: a background save already running did not finish")
        time.sleep(0.2)
    while True:
        info = _redis_info(container)
        if info.get("rdb_bgsave_in_progress") == "0" and int(info.get("rdb_saves", "0")) > saves:
            if info.get("rdb_last_bgsave_status") != "ok":
                raise BackupError("redis: BGSAVE failed (see the redis container's log; disk full?)")
            break
        if time.monotonic() > deadline:
            raise BackupError(f"redis: BGSAVE did not finish within {timeout:.0f}s")
        time.sleep(0.2)
    folder = _config(container, "dir")
    name = _config(container, "dbfilename")
    with target.open("wb") as out:
        docker("exec", container, "cat", f"{folder}/{name}", stdout=out, what="copying the RDB")
    return keys, sample


def _config(container: str, name: str) -> str:
    """A Redis setting's value ("" for one this version does not have)."""
    lines = redis_cli(container, "CONFIG", "GET", name).splitlines()
    return lines[1] if len(lines) > 1 else ""


def redis_aof(container: str) -> tuple[bool, str, str]:
    """(AOF on, its directory name, its file name) of the running server."""
    on = _config(container, "appendonly") == "yes"
    return on, _config(container, "appenddirname") or "appendonlydir", _config(container, "appendfilename")


def place_rdb(data_dir: Path, rdb: Path, aof: tuple[bool, str, str]) -> None:
    """Make `rdb` what a stopped Redis loads at start: dump.rdb, and with AOF on, the AOF's base file
    (Redis 7 starts empty when AOF is on and no AOF exists, even next to an RDB)."""
    on, directory, name = aof
    stat = data_dir.stat()
    shutil.copyfile(rdb, data_dir / "dump.rdb")
    aof_dir = data_dir / directory
    if aof_dir.exists():
        for old in aof_dir.iterdir():
            old.unlink()
    if on:
        aof_dir.mkdir(exist_ok=True)
        shutil.copyfile(rdb, aof_dir / f"{name}.1.base.rdb")
        (aof_dir / f"{name}.manifest").write_text(f"file {name}.1.base.rdb seq 1 type b\n", encoding="utf-8")
    for path in [data_dir / "dump.rdb", aof_dir, *(aof_dir.iterdir() if aof_dir.exists() else [])]:
        os.chown(path, stat.st_uid, stat.st_gid)


def wait_for_redis(container: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if redis_cli(container, "PING") == "PONG":
                return
        except BackupError:
            pass
        if time.monotonic() > deadline:
            raise BackupError(f"redis did not answer PING within {timeout:.0f}s after the restore")
        time.sleep(0.5)


# Files


def tar_folder(root: Path, target: Path, members: list[str] | None = None) -> None:
    """A tar of `root` (or of `members` below it), owners and modes kept."""
    names = members if members is not None else ["."]
    done = subprocess.run(
        ["tar", "-C", str(root), "--numeric-owner", "-cf", str(target), *names], capture_output=True, check=False
    )
    if done.returncode != 0:
        raise BackupError(f"tar of {root} failed: {failure(done.returncode, done.stderr)}")


def untar(source: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["tar", "-C", str(root), "--numeric-owner", "-xpf", str(source)], capture_output=True, check=False
    )
    if done.returncode != 0:
        raise BackupError(f"extracting {source.name} failed: {failure(done.returncode, done.stderr)}")


def file_hashes(root: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every regular file below `root`."""
    hashes: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            hashes[str(path.relative_to(root))] = sha256_of(path)[0]
    return hashes


def sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(4 * 1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def empty_folder(root: Path) -> None:
    for path in root.iterdir():
        if path.is_dir() and not path.is_symlink():
            subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)
        else:
            path.unlink()


# Throwaway copies for drills


@contextmanager
def throwaway(name: str, image: str, options: list[str], command: list[str]) -> Iterator[str]:
    """A container on no network, removed whatever happens."""
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    docker("run", "-d", "--name", name, "--network", "none", *options, image, *command, what=f"starting {name}")
    try:
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def wait_ready(container: str, what: str, seconds: int = 120) -> None:
    """Until the container's PostgreSQL answers over TCP, which it does only once initialisation is over (the
    init-time server listens on its socket alone)."""
    deadline = time.monotonic() + seconds
    probe = ["docker", "exec", container, "pg_isready", "-q", "-h", "127.0.0.1"]
    while subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise BackupError(f"{what} did not start within {seconds}s")
        time.sleep(0.5)


def drill_postgres(project: str, image: str, dump: Path, tables: list[str]) -> dict[str, int]:
    """Restore `dump` into a fresh server of `image`; every table's rows counted there."""
    env = [f"POSTGRES_USER={PG_USER}", f"POSTGRES_DB={PG_DB}", f"POSTGRES_PASSWORD={secrets.token_hex(16)}"]
    options = [item for setting in env for item in ("-e", setting)]
    with throwaway(f"{project}-drill-postgres", image, options, ["postgres"]) as container:
        wait_ready(container, "the drill's PostgreSQL")
        restore_postgres(StackPostgres(container), dump, clean=False, privileges=False)
        return table_counts(StackPostgres(container), tables)


def drill_redis(project: str, image: str, rdb: Path, sample: dict[str, str], scratch: Path) -> tuple[int, list[str]]:
    """Load `rdb` into a fresh Redis of `image`: (its key count, sample keys missing or of another type)."""
    data = scratch / "redis"
    data.mkdir(mode=0o777)
    data.chmod(0o777)  # the official image runs redis as its own user
    shutil.copyfile(rdb, data / "dump.rdb")
    (data / "dump.rdb").chmod(0o644)
    password = secrets.token_hex(16)
    command = ["redis-server", "--appendonly", "no", "--save", "", "--dir", "/data", "--requirepass", password]
    options = ["-e", f"REDIS_PASSWORD={password}", "-v", f"{data}:/data"]
    with throwaway(f"{project}-drill-redis", image, options, command) as container:
        wait_for_redis(container)
        keys = int(redis_cli(container, "DBSIZE"))
        wrong = [key for key, kind in sample.items() if redis_cli(container, "TYPE", key) != kind]
    return keys, wrong


# Point-in-time recovery

PGDATA = "/var/lib/postgresql/data"  # the image's, and where compose mounts the stack's volume
PITR_WAL = "pitr-wal"  # in the data directory during a recovery: restore_command's relative path is from there
_RECOVERY_KEYS = ("restore_command", "recovery_target_time", "recovery_target_action")


def base_backup(container: str, target: Path) -> str:
    """A gzipped tar of the whole cluster (pg_basebackup, with the WAL it needs); its backup_label text."""
    # A fast checkpoint: the default spread one is paced over checkpoint_timeout x completion_target (4.5 min)
    # whatever little is dirty, and every full, pre-deploy and pre-restore backup waited that long (bench measured
    # 226 s for a 37 MB database, 4.5 s with this); the appliance's database is small, so the burst is short.
    with target.open("wb") as out:
        docker(
            "exec", container, "pg_basebackup", "-U", PG_USER, "-D", "-", "-Ft", "-X", "fetch", "-Z", "1",
            "--checkpoint", "fast", stdout=out, what="pg_basebackup",
        )  # fmt: skip
    with tarfile.open(target, "r:gz") as archive:
        member = archive.extractfile("backup_label")
        if member is None:
            raise BackupError("pg_basebackup's tar holds no backup_label")
        return member.read().decode()


def system_id(container: str) -> str:
    """The cluster's system identifier: a fresh initdb gets a new one, so WAL of two clusters never mixes."""
    return psql(StackPostgres(container), "SELECT system_identifier FROM pg_control_system()").strip()


def recovery_settings(target_time: str | None) -> str:
    """postgresql.auto.conf lines for a recovery from PITR_WAL, to `target_time` or to the archive's end."""
    lines = [f"restore_command = 'cp {PITR_WAL}/%f \"%p\"'"]
    if target_time is not None:
        lines += [f"recovery_target_time = '{target_time}'", "recovery_target_action = 'promote'"]
    return "\n".join(lines) + "\n"


def replay(container: str, data_dir: Path, base: Path, wal: Path, target_time: str | None, timeout: float) -> bool:
    """Replace the stopped server's data with `base`, replay the WAL in `wal` up to `target_time`, and wait
    until the server has promoted itself; the recovery's settings and segments are then removed. False when
    the archive ends before `target_time`: then all of it is replayed (what there is, all earlier than that)."""
    stat = data_dir.stat()
    empty_folder(data_dir)
    base_settings = _recovery_folder(data_dir, base, wal, target_time, (stat.st_uid, stat.st_gid))
    settings = data_dir / "postgresql.auto.conf"
    reached = True
    deadline = time.monotonic() + timeout
    # A recovery that stops (FATAL) must stay stopped: the stack's restart policy would start it over and over.
    policy = docker("inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}", container).strip() or "no"
    docker("update", "--restart", "no", container, what="pausing postgres's restart policy")
    try:
        while (fatal := _recover(container, deadline)) is not None:
            if target_time is None or not reached or _ENDED_EARLY not in fatal:
                raise BackupError(f"PostgreSQL's recovery failed: {fatal}")
            # It stops there rather than promote: carry on to the archive's end, without a target.
            reached = False
            settings.write_text(base_settings + recovery_settings(None), encoding="utf-8")
    finally:
        docker("update", "--restart", policy, container, what="restoring postgres's restart policy")
    for key in _RECOVERY_KEYS:  # one statement per call: ALTER SYSTEM refuses to run in a transaction block
        psql(StackPostgres(container), f"ALTER SYSTEM RESET {key}")
    psql(StackPostgres(container), "SELECT pg_reload_conf()")
    shutil.rmtree(data_dir / PITR_WAL)
    return reached


def _recovery_folder(data_dir: Path, base: Path, wal: Path, target_time: str | None, owner: tuple[int, int]) -> str:
    """`base` extracted into the empty `data_dir` with `wal` and the recovery settings, owned by `owner`;
    the base backup's own postgresql.auto.conf text (what the recovery settings are added to)."""
    done = subprocess.run(
        ["tar", "-C", str(data_dir), "--numeric-owner", "-xzpf", str(base)], capture_output=True, check=False
    )
    if done.returncode != 0:
        raise BackupError(f"extracting the base backup failed: {failure(done.returncode, done.stderr)}")
    shutil.move(wal, data_dir / PITR_WAL)  # the work folder and the volume may be two filesystems
    (data_dir / "recovery.signal").touch()
    settings = data_dir / "postgresql.auto.conf"
    base_settings = settings.read_text(encoding="utf-8")
    settings.write_text(base_settings + recovery_settings(target_time), encoding="utf-8")
    subprocess.run(["chown", "-R", f"{owner[0]}:{owner[1]}", str(data_dir)], check=True)
    return base_settings


def drill_replay(
    project: str, image: str, base: Path, wal: Path, target_time: str | None, scratch: Path,
    owner: tuple[int, int], tables: list[str], timeout: float,
) -> tuple[str, dict[str, int]]:  # fmt: skip
    """A throwaway server of `image` (no network) from `base` with the WAL in `wal` replayed to `target_time`
    (None: all of it): (the time of the last commit it replayed, rows per table then). An archive that ends
    before that moment fails: what a drill to a time proves is that the chain of segments reaches it."""
    data = scratch / "pgdata"
    data.mkdir(mode=0o700)
    _recovery_folder(data, base, wal, target_time, owner)
    name = f"{project}-drill-pitr"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    docker("create", "--name", name, "--network", "none", "-v", f"{data}:{PGDATA}", image, "postgres",
           what="creating the drill's PostgreSQL")  # fmt: skip
    try:
        fatal = _recover(name, time.monotonic() + timeout)
        if fatal is not None and _ENDED_EARLY in fatal:
            raise BackupError(f"the archived WAL ends before {target_time}: a recovery cannot reach that moment")
        if fatal is not None:
            raise BackupError(f"the drill's recovery to {target_time} failed: {fatal}")
        last = psql(StackPostgres(name), "SELECT pg_last_xact_replay_timestamp()").strip()
        return last, table_counts(StackPostgres(name), tables)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


_ENDED_EARLY = "recovery ended before configured recovery target was reached"


def _recover(container: str, deadline: float) -> str | None:
    """Start the server and wait until it promoted (None) or stopped: then its last FATAL line."""
    since = docker("inspect", "--format", "{{.State.FinishedAt}}", container).strip()
    docker("start", container, what="starting postgres for the recovery")
    query = ["psql", "-U", PG_USER, "-d", PG_DB, "-tAXqc", "SELECT pg_is_in_recovery()"]
    while True:
        running = docker("inspect", "--format", "{{.State.Status}}", container).strip() == "running"
        if running:
            answer = subprocess.run(["docker", "exec", container, *query], capture_output=True, text=True, check=False)
            if answer.stdout.strip() == "f":
                return None
        if not running or time.monotonic() > deadline:
            logs = subprocess.run(
                ["docker", "logs", "--since", since, container], capture_output=True, text=True, check=False
            )
            fatal = [line for line in (logs.stdout + logs.stderr).splitlines() if "FATAL:" in line or "PANIC:" in line]
            if running:
                return "not done within the time allowed"
            return re.split(r"(?:FATAL|PANIC):", fatal[-1], maxsplit=1)[-1].strip() if fatal else "the server stopped"
        time.sleep(0.5)
