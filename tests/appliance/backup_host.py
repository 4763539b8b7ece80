"""What the backup integration tests share: a host's backup side in a folder (the zipapp and its settings, against
the local COS, with a real age key) and the stack's containers' start, wait and removal."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker

from appliance import sandbox
from appliance.backup.cos import MB, CosStore, CosTarget
from appliance.backup.dump import wait_ready
from appliance.backup.install import bundle
from appliance.backup.settings import HostSettings, ManagedDatabase, Policy
from appliance.host_paths import HostPaths
from tests.conftest import free_port
from tests.cosfake import FakeCos


def sh(command: str) -> str:
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{command}: {done.stderr}"
    return done.stdout


def flip_a_byte(cos: CosStore, key: str, scratch: Path) -> None:
    """Corrupt the object `key` in the bucket as a bad disk or a bad copy would: one bit of its middle byte, through
    `scratch` (a file path)."""
    cos.get_file(key, scratch)
    data = bytearray(scratch.read_bytes())
    data[len(data) // 2] ^= 0x01
    scratch.write_bytes(bytes(data))
    cos.put_file(key, scratch)


@dataclass(frozen=True)
class BackupSide:
    """BASE/shared/backup.json and the zipapp in `base`, the age identity, and the local COS they point at."""

    settings_file: Path
    pyz: Path
    key: str
    recipient: str
    fake: FakeCos
    cos: CosStore


@contextmanager
def backup_side(
    base: Path,
    project: str,
    bucket: str,
    secret: tuple[str, str],
    pitr: bool = False,
    database: ManagedDatabase | None = None,
    managed_redis: str | None = None,
) -> Iterator[BackupSide]:
    """The host folders a backup writes (shared/backups, metrics, certs), a fresh age key, the local COS with
    `bucket` and the COS key `secret` (stopped afterwards), the settings (a managed `database` and Redis, if given)
    and the zipapp."""
    paths = HostPaths(str(base))
    for folder in (paths.backups, paths.metrics, paths.certs):
        Path(folder).mkdir(parents=True)
    key = sh("age-keygen 2>/dev/null")
    recipient = next(line.split(": ")[1] for line in key.splitlines() if line.startswith("# public key: "))
    secret_id, secret_key = secret
    fake = FakeCos("127.0.0.1", free_port(), secret_id, secret_key)
    fake.create_bucket(bucket)
    fake.start()
    try:
        target = CosTarget(bucket, "ap-shanghai", secret_id, secret_key, f"http://127.0.0.1:{fake.port}", 1 * MB)
        settings = HostSettings(
            project, str(base), "test-host", "backups/", recipient, target, Policy(), pitr, database, managed_redis
        )
        settings_file = Path(paths.backup_settings)
        settings_file.write_text(settings.to_json())
        pyz = base / "backup.pyz"
        pyz.write_bytes(bundle())
        yield BackupSide(settings_file, pyz, key, recipient, fake, CosStore(target))
    finally:
        fake.stop()


@contextmanager
def stack_containers(
    project: str,
    *postgres_options: str,
    postgres_command: tuple[str, ...] = ("postgres",),
    volumes: tuple[str, ...] = (),
) -> Iterator[tuple[str, str]]:
    """The stack's PostgreSQL (more `docker run` options, e.g. volumes, and its command) and Redis on the stand-in
    images as Compose would label them, the artifacts volume made and PostgreSQL ready: their containers; then the
    containers and the volumes (`volumes`, redisdata and artifacts) removed, whatever failed on the way."""
    client = docker.from_env()
    postgres_image, redis_image = (sandbox.standin_image(client, name) for name in ("postgres", "redis"))
    started: list[str] = []
    try:
        started.append(_start_postgres(project, postgres_image, postgres_options, postgres_command))
        started.append(_start_redis(project, redis_image))
        sh(f"docker volume create {project}_artifacts")
        wait_ready(started[0], "the test's PostgreSQL")
        yield started[0], started[1]
    finally:
        if started:
            sh(f"docker rm -f {' '.join(started)} >/dev/null")
        names = " ".join(f"{project}_{volume}" for volume in (*volumes, "redisdata", "artifacts"))
        sh(f"docker volume rm -f {names} >/dev/null")


def _start_postgres(project: str, image: str, options: tuple[str, ...], command: tuple[str, ...]) -> str:
    labels = ["--label", f"com.docker.compose.project={project}", "--label", "com.docker.compose.service=postgres"]
    environment = ["-e", "POSTGRES_USER=appliance", "-e", "POSTGRES_DB=appliance", "-e", "POSTGRES_PASSWORD=pw"]
    run = ["docker", "run", "-d", "--name", f"{project}-postgres", *labels, "--network", "none", *environment]
    done = subprocess.run([*run, *options, image, *command], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"starting {project}-postgres: {done.stderr}"
    return done.stdout.strip()


def _start_redis(project: str, image: str) -> str:
    """With an append-only file on its volume, redisdata."""
    labels = f"--label com.docker.compose.project={project} --label com.docker.compose.service=redis"
    return sh(
        f"docker run -d --name {project}-redis {labels} --network none -e REDIS_PASSWORD=pw "
        f"-v {project}_redisdata:/data {image} redis-server --requirepass pw --appendonly yes"
    ).strip()


# What the TLS-only server's container runs: the certificate, key and an hba file of hostssl lines alone (a
# plaintext TCP connection finds no entry), then the image's own entry point with TLS on.
_TLS_ONLY = """set -eu
mkdir -p /tls
printf '%s' "$TLS_CERT" > /tls/server.crt
printf '%s' "$TLS_KEY" > /tls/server.key
printf 'local all all trust\\nhostssl all all all scram-sha-256\\n' > /tls/hba.conf
chown -R postgres /tls && chmod 600 /tls/server.key
exec docker-entrypoint.sh postgres -c ssl=on -c ssl_cert_file=/tls/server.crt -c ssl_key_file=/tls/server.key \\
  -c hba_file=/tls/hba.conf -c log_connections=on
"""


@contextmanager
def managed_postgres(name: str, port: int, tls: tuple[str, str] | None) -> Iterator[str]:
    """A stand-in for a TencentDB PostgreSQL on 127.0.0.1:`port`: TLS only with `tls` (the server's certificate
    chain and key, PEM), else plaintext only (ssl off); superuser `admin`, password `pw`. Its container, removed
    afterwards."""
    image = sandbox.standin_image(docker.from_env(), "postgres")
    run = ["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:5432", "-e", "POSTGRES_USER=admin",
           "-e", "POSTGRES_PASSWORD=pw"]  # fmt: skip
    if tls is not None:
        run += ["-e", f"TLS_CERT={tls[0]}", "-e", f"TLS_KEY={tls[1]}", image, "sh", "-c", _TLS_ONLY]
    else:
        run += [image, "postgres"]
    done = subprocess.run(run, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"starting {name}: {done.stderr}"
    try:
        wait_ready(name, f"the managed stand-in {name}")
        yield name
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
