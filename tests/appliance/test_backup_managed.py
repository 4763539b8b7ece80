"""Backups beside a managed TencentDB PostgreSQL (#19): the config that allows them, what bootstrap hands the host,
the client container's command (pure), and the host-side program against a real TLS-only PostgreSQL: a dump over
verified TLS, its drill and restore, and one-line failures for a wrong CA and for a server that speaks no TLS."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import docker
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance import sandbox
from appliance.backup.cos import CosStore
from appliance.backup.dump import PASSFILE_IN, ClientPostgres, pgpass_line
from appliance.backup.install import host_settings, managed_database
from appliance.backup.settings import HostSettings, ManagedDatabase
from appliance.config import load_config
from appliance.errors import ConfigError
from appliance.secrets import load_secrets
from tests.appliance.backup_host import backup_side, managed_postgres, sh
from tests.appliance.test_managed_data import MIGRATION_PASSWORD, managed_config
from tests.certificates import issue_chain
from tests.conftest import free_port

BUCKET = "managed-1250000000"
SECRET_ID, SECRET_KEY = "AKIDmanaged", "managed-secret"
PASSWORD = "mig:pass\\word"  # libpq's passfile escapes both
REDIS_AT = "redis.internal.example.com:6380"


def database(port: int, ca_pem: str | None, image: str = "postgres:16-bookworm") -> ManagedDatabase:
    return ManagedDatabase("localhost", port, "appdb", "migrator", PASSWORD, "verify-full", ca_pem, image)


# The config and what bootstrap writes


def with_backup(path: Path, extra: str = "") -> None:
    backup = f'backup = {{ enabled = true, cos_bucket = "b-1250000000", age_recipient = "age1abc"{extra} }}'
    text = path.read_text().replace("[environments.production]\n", f"[environments.production]\n{backup}\n")
    path.write_text(text)


@pytest.mark.unit
def test_backups_are_allowed_beside_managed_data_but_not_pitr_or_redis_snapshots(tmp_path: Path) -> None:
    config = managed_config(tmp_path, 'migration_user = "appliance_migrator"')
    with_backup(config.path)
    assert load_config(config.path).settings.backup.enabled
    config = managed_config(tmp_path)
    with_backup(config.path, ", pitr = true")
    with pytest.raises(ConfigError, match=r"backup\.pitr: a managed database's WAL is not the appliance's to archive"):
        load_config(config.path)
    config = managed_config(tmp_path)
    with_backup(config.path, ', redis_schedule = "15 * * * *"')
    with pytest.raises(ConfigError, match=r"backup\.redis_schedule: a managed Redis is not snapshotted"):
        load_config(config.path)


@pytest.mark.unit
def test_the_host_gets_the_owning_role_its_password_and_the_ca_in_its_0600_settings(tmp_path: Path) -> None:
    config = managed_config(tmp_path, 'migration_user = "appliance_migrator"')
    with_backup(config.path)
    config = load_config(config.path)
    secrets_text = config.secrets_path.read_text() + "COS_SECRET_ID=AKIDx\nCOS_SECRET_KEY=sk\n"
    config.secrets_path.write_text(secrets_text)
    values = {name: secret.reveal() for name, secret in load_secrets(config.secrets_path).values.items()}
    host = host_settings(config, values)
    assert host.database is not None and host.managed_redis == REDIS_AT
    assert (host.database.user, host.database.password) == ("appliance_migrator", MIGRATION_PASSWORD)
    assert (host.database.host, host.database.port, host.database.sslmode) == ("db.internal.example.com", 5432,
                                                                              "verify-full")  # fmt: skip
    assert host.database.ca_pem == (tmp_path / "tencentdb-ca.pem").read_text()
    assert host.database.image == config.settings.images.postgres
    assert HostSettings.from_json(host.to_json()) == host
    assert MIGRATION_PASSWORD not in host.database.target
    config.secrets_path.write_text(secrets_text.replace(f"DATABASE_MIGRATION_PASSWORD={MIGRATION_PASSWORD}\n", ""))
    values = {name: secret.reveal() for name, secret in load_secrets(config.secrets_path).values.items()}
    with pytest.raises(ConfigError, match=r"backups dump the managed database as appliance_migrator: set DATABASE_MIG"):
        managed_database(config, values)


@pytest.mark.unit
def test_the_client_container_gets_libpq_settings_and_no_password(tmp_path: Path) -> None:
    client = ClientPostgres(database(6432, "CA"), tmp_path / "pgpass", tmp_path / "ca.pem")
    command = client.command("pg_dump", "-Fc")
    assert command[:4] == ["run", "--rm", "--network", "host"]
    assert command[-5:] == ["postgres:16-bookworm", "pg_dump", "-d", "appdb", "-Fc"]
    environment = {command[n + 1] for n, item in enumerate(command) if item == "-e"}
    assert {"PGHOST=localhost", "PGPORT=6432", "PGDATABASE=appdb", "PGUSER=migrator", "PGSSLMODE=verify-full",
            "PGSSLROOTCERT=/run/appliance/postgres-ca.pem", f"PGPASSFILE={PASSFILE_IN}"} <= environment  # fmt: skip
    mounts = [command[n + 1] for n, item in enumerate(command) if item == "-v"]
    assert mounts == [f"{tmp_path}/pgpass:{PASSFILE_IN}:ro", f"{tmp_path}/ca.pem:/run/appliance/postgres-ca.pem:ro"]
    assert not any(PASSWORD in item or item.startswith("PGPASSWORD") for item in command)
    assert "-i" in client.command("pg_restore", stdin=True)
    assert pgpass_line(database(6432, None)) == "localhost:6432:appdb:migrator:mig\\:pass\\\\word\n"
    unchecked = ClientPostgres(replace(database(6432, None), sslmode="require"), tmp_path / "pgpass", None)
    assert not any("PGSSLROOTCERT" in item or "ca.pem" in item for item in unchecked.command("psql"))
    assert client.what("pg_dump") == "pg_dump of migrator@localhost:6432/appdb (sslmode verify-full)"


# The host-side program against a real TLS-only PostgreSQL

SETUP = (
    f"CREATE ROLE migrator LOGIN PASSWORD '{PASSWORD}'; CREATE ROLE app LOGIN PASSWORD 'apppw'",
    "CREATE DATABASE appdb OWNER migrator",  # alone: not in a transaction block
)
TABLES = (
    "CREATE TABLE items (id serial PRIMARY KEY, body text); "
    "INSERT INTO items (body) SELECT md5(n::text) FROM generate_series(1, 3000) n; "
    "CREATE TABLE notes (id int PRIMARY KEY); INSERT INTO notes SELECT generate_series(1, 7); "
    "GRANT SELECT, INSERT, UPDATE, DELETE ON items, notes TO app;"
)


@dataclass(frozen=True)
class Managed:
    project: str
    settings_file: Path
    pyz: Path
    key: str
    cos: CosStore
    server: str
    port: int
    chain_root: str


def psql(server: str, sql: str, user: str = "migrator", db: str = "appdb") -> str:
    return sh(f"docker exec {server} psql -U {user} -d {db} -tAXq -c {json.dumps(sql)}")


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Managed]:
    project = f"bkmg{secrets.token_hex(3)}"
    base = tmp_path_factory.mktemp("base")
    chain = issue_chain("localhost")
    port = free_port()
    image = sandbox.standin_image(docker.from_env(), "postgres")
    with managed_postgres(f"{project}-tencentdb", port, (chain.bundle, chain.key)) as server:
        for statement in SETUP:
            psql(server, statement, user="admin", db="postgres")
        psql(server, TABLES)
        target = database(port, chain.root, image)
        sh(f"docker volume create {project}_artifacts >/dev/null")
        try:
            side_args = (base, project, BUCKET, (SECRET_ID, SECRET_KEY))
            with backup_side(*side_args, database=target, managed_redis=REDIS_AT) as side:
                yield Managed(project, side.settings_file, side.pyz, side.key, side.cos, server, port, chain.root)
        finally:
            sh(f"docker volume rm -f {project}_artifacts >/dev/null")


def run(managed: Managed, *args: str, identity: str = "") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(managed.pyz), "--settings", str(managed.settings_file), *args]
    return subprocess.run(command, input=identity, capture_output=True, text=True, check=False, timeout=600)


@contextmanager
def settings_with(managed: Managed, **changes: object) -> Iterator[None]:
    """The host's settings with the managed database changed so, put back afterwards."""
    good = managed.settings_file.read_text()
    settings = HostSettings.from_json(good)
    assert settings.database is not None
    changed = replace(settings.database, **changes)  # type: ignore[arg-type]
    managed.settings_file.write_text(replace(settings, database=changed).to_json())
    try:
        yield
    finally:
        managed.settings_file.write_text(good)


@pytest.mark.integration
def test_the_server_is_tls_only(managed: Managed) -> None:
    image = sandbox.standin_image(docker.from_env(), "postgres")
    plain = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", "-e", "PGSSLMODE=disable", "-e", "PGPASSWORD=apppw", image,
         "psql", "-h", "localhost", "-p", str(managed.port), "-U", "app", "-d", "appdb", "-c", "SELECT 1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert plain.returncode != 0 and "no encryption" in plain.stderr


@pytest.mark.integration
def test_a_managed_backup_over_verified_tls_drills_and_restores(managed: Managed) -> None:
    done = run(managed, "backup", "--reason", "managed")
    assert done.returncode == 0, done.stderr
    identifier = done.stdout.split()[1]
    manifest = json.loads(managed.cos.get_bytes(f"backups/{managed.project}/{identifier}/manifest.json"))
    assert manifest["tables"] == {"public.items": 3000, "public.notes": 7}
    assert manifest["database"] == f"migrator@localhost:{managed.port}/appdb (sslmode verify-full)"
    skipped = f"managed Redis at {REDIS_AT}: TencentDB for Redis's own snapshots cover it"
    assert manifest["skipped"] == {"redis": skipped}
    assert {p["name"] for p in manifest["parts"]} == {"postgres", "files", "state"}
    assert manifest["versions"]["postgres"].startswith("15.") and "redis" not in manifest["versions"]
    # The dump went over TLS as the owning role: the server logged the client container's connection so.
    log = sh(f"docker logs {managed.server} 2>&1")
    assert "user=migrator database=appdb application_name=appliance-backup SSL enabled (protocol=TLS" in log
    assert PASSWORD not in log and PASSWORD not in done.stdout + done.stderr
    assert not list((managed.settings_file.parent / "backups").glob("work-*"))  # the passfile went with its folder

    drilled = run(managed, "drill", identity=managed.key)
    assert drilled.returncode == 0, drilled.stderr
    assert f"drill of {identifier} passed" in drilled.stdout and "2 tables, 3007 rows, redis skipped" in drilled.stdout
    assert f"drill of {identifier}: Redis skipped, it is not part of this backup (managed Redis at" in drilled.stderr

    psql(managed.server, "DELETE FROM items WHERE id % 3 = 0; DROP TABLE notes")
    restored = run(managed, "restore", "--id", identifier, identity=managed.key)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.strip() == (
        f"restored {identifier} (full): 2 tables, 3007 rows, redis left as it is (managed: {REDIS_AT}), 0 files"
    )
    assert psql(managed.server, "SELECT count(*) FROM items").strip() == "3000"
    # The restore kept the API role's grants (they are in the dump) and the tables' owner.
    assert psql(managed.server, "SELECT count(*) FROM notes", user="app").strip() == "7"
    assert psql(managed.server, "SELECT tableowner FROM pg_tables WHERE tablename = 'notes'").strip() == "migrator"
    point = run(managed, "restore", "--to-time", "2026-01-01T00:00:00+00:00", identity=managed.key)
    assert point.returncode == 1 and "TencentDB's own point-in-time restore" in point.stderr.strip().splitlines()[-1]
    only_redis = run(managed, "backup", "--only", "redis")
    assert only_redis.returncode == 1
    assert only_redis.stderr.strip().splitlines() == [
        f"backup failed: backup --only redis: Redis is managed ({REDIS_AT}) and TencentDB for Redis's own snapshots "
        "back it up: remove backup.redis_schedule and run inv bootstrap"
    ]


def stranger_ca() -> str:
    """A CA that signed nothing of the server's (another instance's console download, say)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TencentDB Other Instance CA")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30)).add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.integration
def test_a_wrong_ca_fails_the_backup_in_one_line_naming_the_target(managed: Managed) -> None:
    before = [item.key for item in managed.cos.objects(f"backups/{managed.project}/")]
    with settings_with(managed, ca_pem=stranger_ca()):
        done = run(managed, "backup")
        assert done.returncode == 1
        [line] = done.stderr.strip().splitlines()
        target = f"migrator@localhost:{managed.port}/appdb (sslmode verify-full)"
        assert line.startswith(f"backup failed: pg_dump of {target} failed: ")
        assert "certificate verify failed" in line
    assert [item.key for item in managed.cos.objects(f"backups/{managed.project}/")] == before


@pytest.mark.integration
def test_a_server_without_tls_fails_the_backup_in_one_line(managed: Managed) -> None:
    port = free_port()
    with managed_postgres(f"{managed.project}-plaintext", port, None) as server:
        for statement in SETUP:
            psql(server, statement, user="admin", db="postgres")
        with settings_with(managed, port=port):
            done = run(managed, "backup")
            assert done.returncode == 1
            [line] = done.stderr.strip().splitlines()
            assert line.startswith(f"backup failed: pg_dump of migrator@localhost:{port}/appdb (sslmode verify-full)")
            assert "server does not support SSL, but SSL was required" in line
