"""`images.transport = "registry"`: the operator pushes the API image, the host logs in and pulls.

The registry is Debian's docker-registry (the Docker distribution server) with TLS from a throwaway CA and
htpasswd accounts, bound to the Docker bridge's gateway address so that the sandbox CVM reaches it.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import yaml

from appliance.config import load_config
from appliance.remote import open_host
from appliance.shell import sh
from tests.conftest import Deployed, free_port, inv
from tests.e2e.conftest import bridge_gateway
from tests.e2e.traffic import Site

pytestmark = pytest.mark.e2e
USER, PASSWORD = "ci", "registry-pass-0427"


@dataclass(frozen=True)
class Registry:
    address: str  # host:port
    config: Path  # the sandbox's config, switched to the registry transport


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def registry(deployed: Deployed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    gateway = bridge_gateway()
    address = f"{gateway}:{free_port()}"
    folder = tmp_path_factory.mktemp("registry")
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"),
        *("-subj", "/CN=test registry CA", "-keyout", str(folder / "ca.key"), "-out", str(folder / "ca.pem")),
    )
    _openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={gateway}"),
        *("-keyout", str(folder / "server.key"), "-out", str(folder / "server.csr")),
    )
    (folder / "san.ext").write_text(f"subjectAltName=IP:{gateway}\n")
    _openssl(
        *("x509", "-req", "-in", str(folder / "server.csr"), "-CA", str(folder / "ca.pem")),
        *("-CAkey", str(folder / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(folder / "san.ext")),
        *("-out", str(folder / "server.pem")),
    )
    (folder / "htpasswd").write_bytes(USER.encode() + b":" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt()))
    settings = {
        "version": 0.1,
        "storage": {"filesystem": {"rootdirectory": str(folder / "data")}},
        "http": {
            "addr": address,
            "tls": {"certificate": str(folder / "server.pem"), "key": str(folder / "server.key")},
        },
        "auth": {"htpasswd": {"realm": "test", "path": str(folder / "htpasswd")}},
    }
    (folder / "config.yml").write_text(yaml.safe_dump(settings))
    server = subprocess.Popen(
        ["docker-registry", "serve", str(folder / "config.yml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    trust = f"/etc/docker/certs.d/{address}"
    config = load_config(deployed.sandbox.config_file)
    ca = (folder / "ca.pem").read_text()
    Path(trust).mkdir(parents=True, exist_ok=True)
    (Path(trust) / "ca.crt").write_text(ca)
    with open_host(config) as host:
        host.run(f"install -d {sh(trust)} && printf %s {sh(ca)} > {sh(trust + '/ca.crt')}")
    transport = f'transport = "registry"\nregistry = "{address}/cvm"\nregistry_user = "{USER}"\n'
    variant = folder / "registry.toml"
    variant.write_text(deployed.sandbox.config_file.read_text().replace('transport = "archive"\n', transport, 1))
    try:
        deadline = time.monotonic() + 20
        while socket.socket().connect_ex((gateway, int(address.rsplit(":", 1)[1]))) != 0:
            assert time.monotonic() < deadline and server.poll() is None, "docker-registry did not start"
            time.sleep(0.2)
        yield Registry(address, variant)
    finally:
        server.terminate()
        server.wait(timeout=10)
        subprocess.run(["rm", "-rf", trust], check=False)
        with open_host(config) as host:
            host.run(f"rm -rf {sh(trust)}")


def served_version(deployed: Deployed) -> str:
    with open_host(load_config(deployed.sandbox.config_file)) as host:
        site = Site(deployed.sandbox.https_port, host.run("cat /opt/appliance/shared/certs/ca.pem").stdout)
    with site.client() as client:
        return str(client.get("/api/health").json()["version"])


def test_a_wrong_registry_password_is_one_line_and_changes_nothing(registry: Registry, deployed: Deployed) -> None:
    before = served_version(deployed)
    run = inv(
        *("deploy", "--version", "r0", "--image", "cvm-appliance/api:v1", "--config", str(registry.config)),
        env={"REGISTRY_PASSWORD": "not-the-password"},
    )
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: push of {registry.address}/cvm/cvm-appliance/api:r0")
    assert "not-the-password" not in run.stdout + run.stderr
    assert served_version(deployed) == before


def test_deploy_through_the_registry_pushes_then_the_host_pulls(registry: Registry, deployed: Deployed) -> None:
    run = inv(
        *("deploy", "--version", "r1", "--image", "cvm-appliance/api:v1", "--config", str(registry.config)),
        env={"REGISTRY_PASSWORD": PASSWORD},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"registry login {registry.address}" in run.stdout
    assert f"pull {registry.address}/cvm/cvm-appliance/api:r1" in run.stdout
    assert PASSWORD not in run.stdout + run.stderr
    assert served_version(deployed) == "r1"
