"""Throwaway PostgreSQL and Redis that speak TLS only, as TencentDB does with SSL on: test_managed_data.py's."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.certificates import issue_chain
from tests.service.stack import free_port, stop_process, wait_until

PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name))
PASSWORD = "s3cret/with:odd@chars?&"  # URL-quoting it is part of what is tested
SERVER_NAME = "localhost"  # the name in the servers' certificates, and the one clients connect to


@dataclass(frozen=True)
class TlsServers:
    """Where the servers listen, the CA that signed them, and a CA that did not."""

    pg_port: int
    redis_port: int
    ca_file: Path
    wrong_ca_file: Path
    folder: Path


def _write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@contextmanager
def _postgres(folder: Path, cert: Path, key: Path, host: str) -> Iterator[int]:
    """A cluster on `host` whose pg_hba.conf has hostssl lines only: a plaintext TCP connection finds no entry."""
    data, port = folder / "pg", free_port()
    pwfile = _write(folder / "pwfile", PASSWORD + "\n", 0o600)
    if os.geteuid() == 0:
        for path in (folder, pwfile, cert, key):
            shutil.chown(path, "postgres")
    run = [*_as_postgres()]
    subprocess.run(
        [*run, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile),
         "--auth-local=trust", "--auth-host=scram-sha-256"],
        check=True, capture_output=True,
    )  # fmt: skip
    # Loopback clients; on another address (the Docker bridge's, for the sandboxes) any client, still TLS only.
    clients = ("127.0.0.1/32", "::1/128") if host == SERVER_NAME else ("0.0.0.0/0", "::/0")
    (data / "pg_hba.conf").write_text(
        "local all all trust\n" + "".join(f"hostssl all all {network} scram-sha-256\n" for network in clients)
    )
    options = (
        f"-p {port} -k {folder} -c listen_addresses={host} -c ssl=on "
        f"-c ssl_cert_file={cert} -c ssl_key_file={key} -c fsync=off"
    )
    subprocess.run(
        [*run, str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "pg.log"), "-w", "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield port
    finally:
        subprocess.run([*run, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)


@contextmanager
def _redis(folder: Path, cert: Path, key: Path, ca: Path, host: str) -> Iterator[int]:
    """redis-server on `host`, a TLS port only (--port 0): nothing listens for plaintext."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1" if host == SERVER_NAME else host, "--port", "0", "--tls-port", str(port),
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(host=host, port=port, password=PASSWORD, ssl=True, ssl_ca_certs=str(ca), socket_timeout=2)
    try:
        wait_until(lambda: bool(client.ping()), 20, "the TLS-only redis-server")
        yield port
    finally:
        client.close()
        stop_process(proc)


@contextmanager
def tls_servers(host: str = SERVER_NAME) -> Iterator[TlsServers]:
    """Both servers on `host` (SERVER_NAME: loopback; or an address, such as the Docker bridge's), with certificates
    for it from a fresh CA; all removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="managed-data-", dir="/tmp"))
    chain, stranger = issue_chain(host), issue_chain(host)
    cert = _write(folder / "server.crt", chain.bundle, 0o644)
    key = _write(folder / "server.key", chain.key, 0o600)
    ca = _write(folder / "ca.pem", chain.root, 0o644)
    wrong_ca = _write(folder / "wrong-ca.pem", stranger.root, 0o644)
    try:
        with _redis(folder, cert, key, ca, host) as redis_port, _postgres(folder, cert, key, host) as pg_port:
            yield TlsServers(pg_port, redis_port, ca, wrong_ca, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
