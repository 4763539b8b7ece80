"""The scale-out rig (#19): two sandbox app CVMs behind haproxy, TencentDB stand-ins that speak TLS only.

- Data: PostgreSQL and Redis as local processes on the Docker bridge's gateway address (tests/service/tls_servers.py),
  where the API containers inside both sandboxes reach them, with certificates for that address from a CA of their
  own: pg_hba has hostssl lines only, Redis has no plaintext port. The config names them as `database`/`redis`.
- The CLB: haproxy on the VM's loopback, TCP (TLS goes through to each host's nginx), health-checking `/api/health`
  on both hosts' published HTTPS ports every second, two failures down and two successes up; the site's
  `public_url` is haproxy's, so browsers' Origin checks pass whichever host answers.
- Uploads in the local COS (`bridge_cos`), as several hosts need.

One config lists both hosts; `inv bootstrap` and `inv deploy` take it whole. Made once for every scale-out test.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker

from appliance import sandbox as sandboxes
from appliance.config import Config, load_config
from appliance.remote import RemoteHost, connect
from tests.conftest import SandboxFactory, free_port, inv
from tests.cosfake import FakeCos
from tests.e2e.conftest import bridge_cos, bridge_gateway
from tests.e2e.traffic import Site
from tests.service.tls_servers import PASSWORD, TlsServers, tls_servers

ARTIFACT_BUCKET = "scaleout-1250000000"
ARTIFACT_SECRET_ID = "AKIDsandboxscaleout"
ARTIFACT_SECRET_KEY = "sandbox-scaleout-secret"
METRICS_PASSWORD = "scale-out-metrics"  # what the first host's Prometheus reads the second's /metrics with
# haproxy's health check, as a CLB would be set (docs/scaling.md, Step 3): every second, 2 down, 2 up; a check
# unanswered for 3 s fails.
CHECK_INTERVAL_MS, FALL, RISE, CHECK_TIMEOUT_MS = 1000, 2, 2, 3000
POLL_SECONDS = 0.2  # how often the rig's waits read a state again (haproxy's servers, the discussions' leases)


@dataclass(frozen=True)
class Balancer:
    """haproxy on 127.0.0.1:`port`, its servers named after the hosts' letters; its admin socket answers `show stat`."""

    port: int
    socket_path: Path
    process: subprocess.Popen[bytes]

    def states(self) -> dict[str, str]:
        """Each server's state as haproxy sees it: UP, DOWN, ("UP 1/2" while a check is changing its mind)."""
        with socket.socket(socket.AF_UNIX) as admin:
            admin.connect(str(self.socket_path))
            admin.sendall(b"show stat\n")
            text = b""
            while chunk := admin.recv(65536):
                text += chunk
        header, *rows = text.decode().splitlines()
        fields = header.lstrip("# ").split(",")
        table = [dict(zip(fields, row.split(","), strict=False)) for row in rows if row]
        return {row["svname"]: row["status"] for row in table if row["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_for(self, server: str, status: str, seconds: float = 30) -> float:
        """Seconds until haproxy reports `server` in `status`."""
        started = time.monotonic()
        while (seen := self.states().get(server)) != status:
            assert time.monotonic() - started < seconds, f"haproxy: {server} is {seen}, not {status}: {self.states()}"
            time.sleep(POLL_SECONDS)
        return time.monotonic() - started


def haproxy_config(port: int, admin: Path, backends: dict[str, int]) -> str:
    """TCP through to each host's nginx (TLS ends there, as behind a CLB's TCP listener); health checks over TLS."""
    servers = "".join(f"    server {name} 127.0.0.1:{https} check\n" for name, https in backends.items())
    return (
        f"global\n    stats socket {admin} mode 600 level admin\n"
        "defaults\n    mode tcp\n    timeout connect 3s\n    timeout client 1h\n    timeout server 1h\n"
        f"    timeout check {CHECK_TIMEOUT_MS}ms\n    retries 2\n    option redispatch\n"
        f"frontend site\n    bind 127.0.0.1:{port}\n    default_backend hosts\n"
        "backend hosts\n    balance roundrobin\n    option httpchk\n"
        "    http-check send meth GET uri /api/health ver HTTP/1.1 hdr Host 127.0.0.1\n"
        "    http-check expect status 200\n"
        f"    default-server check-ssl verify none inter {CHECK_INTERVAL_MS} fall {FALL} rise {RISE}\n{servers}"
    )


@contextmanager
def balancer(folder: Path, backends: dict[str, int]) -> Iterator[Balancer]:
    """haproxy (Debian's) in the foreground on a free loopback port, stopped on exit."""
    port, admin = free_port(), folder / "haproxy.sock"
    config = folder / "haproxy.cfg"
    config.write_text(haproxy_config(port, admin, backends))
    check = subprocess.run(["haproxy", "-c", "-q", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = (folder / "haproxy.log").open("wb")  # its warnings: which server went down, and why
    process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not admin.exists():
            assert process.poll() is None and time.monotonic() < deadline, "haproxy did not start"
            time.sleep(0.1)
        yield Balancer(port, admin, process)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@dataclass(frozen=True)
class ScaleOut:
    """The rig, bootstrapped and with v1 deployed on both hosts."""

    boxes: dict[str, sandboxes.Sandbox]  # by haproxy's server name: "a" (the canary, hosts[0]) and "b"
    config_file: Path
    data: TlsServers
    gateway: str
    cos: FakeCos
    lb: Balancer
    site: Site  # through haproxy, as the CLB's clients reach it
    direct: dict[str, Site]  # each host's own nginx
    timings: dict[str, float]  # seconds: sandboxes, bootstrap, deploy
    bootstrap_run: subprocess.CompletedProcess[str]

    @property
    def config(self) -> Config:
        return load_config(self.config_file)

    def name_of(self, box: str) -> str:
        """The host as `inv host.drain` and `--host` take it: USER@ADDRESS:PORT."""
        return f"root@{self.boxes[box].address}:{self.boxes[box].ssh_port}"

    @contextmanager
    def host(self, box: str) -> Iterator[RemoteHost]:
        sandbox = self.boxes[box]
        host = next(item for item in self.config.settings.hosts if item.port == sandbox.ssh_port)
        with connect(host, sandbox.key_file, sandbox.known_hosts) as remote:
            yield remote


def two_host_config(
    boxes: dict[str, sandboxes.Sandbox], data: TlsServers, gateway: str, cos: FakeCos, lb_port: int
) -> Path:
    """Sandbox a's config with b as a second host, the managed data, uploads in COS, and haproxy's public URL."""
    first, second = boxes["a"], boxes["b"]
    text = first.config_file.read_text(encoding="utf-8")
    served = f'public_url = "https://{first.address}:{first.https_port}"'
    own_port = f"port = {first.ssh_port}\n"
    assert served in text and own_port in text, text
    text = text.replace(served, f'public_url = "https://127.0.0.1:{lb_port}"')
    # Their addresses on the Docker bridge are the hosts' VPC: where the first host's Prometheus scrapes the other.
    text = text.replace(own_port, f'{own_port}private_address = "{bridge_address(first)}"\n', 1)
    text += (
        f'\n[[environments.sandbox.hosts]]\naddress = "{second.address}"\nport = {second.ssh_port}\nuser = "root"\n'
        f'key = "{second.key_file}"\nknown_hosts = "{second.known_hosts}"\n'
        f'private_address = "{bridge_address(second)}"\n'
        f'\n[environments.sandbox.database]\nhost = "{gateway}"\nport = {data.pg_port}\nname = "postgres"\n'
        f'user = "postgres"\nca_file = "{data.ca_file}"\n'
        f'\n[environments.sandbox.redis]\nhost = "{gateway}"\nport = {data.redis_port}\nca_file = "{data.ca_file}"\n'
        f'\n[environments.sandbox.service]\nartifact_storage = "cos"\nartifact_cos_bucket = "{ARTIFACT_BUCKET}"\n'
        f'artifact_cos_endpoint = "http://{cos.address}:{cos.port}"\n'
    )
    path = first.config_file.parent / "scaleout.toml"
    path.write_text(text, encoding="utf-8")
    secrets = load_config(first.config_file).secrets_path
    with secrets.open("a", encoding="utf-8") as file:
        file.write(
            f"DATABASE_PASSWORD='{PASSWORD}'\nMANAGED_REDIS_PASSWORD='{PASSWORD}'\n"
            f"COS_SECRET_ID={ARTIFACT_SECRET_ID}\nCOS_SECRET_KEY={ARTIFACT_SECRET_KEY}\nMETRICS_PASSWORD={METRICS_PASSWORD}\n"
        )
    return path


def bridge_address(box: sandboxes.Sandbox) -> str:
    """The sandbox's address on the Docker bridge (its "VPC" address: the other sandbox reaches it there)."""
    return str(docker.from_env().containers.get(box.name).attrs["NetworkSettings"]["IPAddress"])


@contextmanager
def scale_out(factory: SandboxFactory, folder: Path) -> Iterator[ScaleOut]:
    """The whole rig: sandboxes, data, COS, haproxy; both hosts bootstrapped by one `inv bootstrap`, v1 deployed by
    one `inv deploy`. Its timings say what the set-up cost."""
    timings: dict[str, float] = {}
    gateway = bridge_gateway()
    started = time.monotonic()
    boxes = {"a": factory("scale-a"), "b": factory("scale-b")}
    timings["sandboxes"] = time.monotonic() - started
    cos = bridge_cos(ARTIFACT_SECRET_ID, ARTIFACT_SECRET_KEY, ARTIFACT_BUCKET, default_bucket=ARTIFACT_BUCKET)
    try:
        with tls_servers(gateway) as data, balancer(folder, {n: b.https_port for n, b in boxes.items()}) as lb:
            config_file = two_host_config(boxes, data, gateway, cos, lb.port)
            started = time.monotonic()
            bootstrapped = inv("bootstrap", "--config", str(config_file), timeout=1500)
            timings["bootstrap"] = time.monotonic() - started
            assert bootstrapped.returncode == 0, bootstrapped.stdout + bootstrapped.stderr
            started = time.monotonic()
            deployed = inv("deploy", "--version", "v1", "--config", str(config_file), timeout=1800)
            timings["deploy"] = time.monotonic() - started
            assert deployed.returncode == 0, deployed.stdout + deployed.stderr
            config = load_config(config_file)
            first = next(iter(boxes.values()))
            with connect(config.settings.hosts[0], first.key_file, first.known_hosts) as remote:
                ca = remote.run(f"cat {config.settings.paths.certs}/ca.pem").stdout
            for name in boxes:
                lb.wait_for(name, "UP", seconds=60)
            yield ScaleOut(
                boxes,
                config_file,
                data,
                gateway,
                cos,
                lb,
                Site(lb.port, ca),
                {name: Site(box.https_port, ca) for name, box in boxes.items()},
                timings,
                bootstrapped,
            )
    finally:
        cos.stop()
