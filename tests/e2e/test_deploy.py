"""`inv deploy` on the bootstrapped sandbox: the stack serves through nginx TLS, health-gated."""

from __future__ import annotations

import io
import json
import ssl
import time
import urllib.request
from pathlib import Path

import docker
import pytest

from appliance.config import load_config
from appliance.remote import RemoteHost
from tests.conftest import Bootstrapped, Deployed, inv

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def deploy_config(bootstrapped: Bootstrapped) -> Path:
    """The sandbox's own config: stand-in images, the LLM stand-in, its forwarded HTTPS address."""
    return bootstrapped.sandbox.config_file


def https_get(port: int, path: str, ca: bytes) -> tuple[int, dict[str, object]]:
    context = ssl.create_default_context(cadata=ca.decode())
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=context, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def first_release(deployed: Deployed) -> str:
    return deployed.first_run.stdout


def test_first_deploy_serves_health_through_nginx_tls(
    first_release: str, bootstrapped: Bootstrapped, bootstrapped_host: RemoteHost
) -> None:
    assert f"release v1 is serving: https://127.0.0.1:{bootstrapped.sandbox.https_port}/" in first_release
    ca = bootstrapped_host.run("cat /opt/appliance/shared/certs/ca.pem").stdout.encode()
    status, body = https_get(bootstrapped.sandbox.https_port, "/api/health", ca)
    assert status == 200, body
    assert body["database"]["connected"] is True  # type: ignore[index]
    assert bootstrapped_host.run("readlink /opt/appliance/current").stdout.strip() == "/opt/appliance/releases/v1"
    audit = bootstrapped_host.run("tail -n 1 /opt/appliance/shared/audit.jsonl").stdout
    assert json.loads(audit)["result"] == "ok"


def test_concurrent_deploy_is_refused_naming_the_holder(
    first_release: str, deploy_config: Path, bootstrapped_host: RemoteHost
) -> None:
    holder = {"who": "alice@laptop", "command": "deploy", "version": "v9", "since": time.time() - 42}
    lock = "/opt/appliance/shared/deploy.lock"
    bootstrapped_host.run(f"mkdir {lock} && echo '{json.dumps(holder)}' > {lock}/holder.json")
    try:
        started = time.monotonic()
        run = inv("deploy", "--version", "v2", "--image", "cvm-appliance/api:v1", "--config", str(deploy_config))
        assert time.monotonic() - started < 30
    finally:
        bootstrapped_host.run(f"rm -rf {lock}")
    assert run.returncode == 4
    assert "deploy lock held by alice@laptop (deploy v9) for 4" in run.stderr
    load_config(deploy_config)  # the config stays valid for later tests


def served_version(bootstrapped: Bootstrapped, host: RemoteHost) -> object:
    ca = host.run("cat /opt/appliance/shared/certs/ca.pem").stdout.encode()
    status, body = https_get(bootstrapped.sandbox.https_port, "/api/health", ca)
    assert status == 200, body
    return body["version"]


def test_switch_to_v2_then_roll_back_to_v1(
    first_release: str, deploy_config: Path, bootstrapped: Bootstrapped, bootstrapped_host: RemoteHost
) -> None:
    run = inv("deploy", "--version", "v2", "--image", "cvm-appliance/api:v1", "--config", str(deploy_config))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "tag the host's copy as cvm-appliance/api:v2" in run.stdout  # same layers: not sent again
    assert served_version(bootstrapped, bootstrapped_host) == "v2"
    started = time.monotonic()
    back = inv("rollback", "--config", str(deploy_config))
    elapsed = time.monotonic() - started
    assert back.returncode == 0, back.stdout + back.stderr
    assert served_version(bootstrapped, bootstrapped_host) == "v1"
    running = bootstrapped_host.run("docker ps --format '{{.Names}}' | grep -c api-v2 || true").stdout.strip()
    assert running == "0"  # the v2 API was drained and stopped
    print(f"rollback with the image on the host: {elapsed:.1f}s")


def test_release_that_never_gets_healthy_leaves_the_served_one_alone(
    first_release: str, deploy_config: Path, bootstrapped: Bootstrapped, bootstrapped_host: RemoteHost
) -> None:
    engine = docker.from_env()
    dockerfile = b'FROM cvm-appliance/api:v1\nCMD ["python3", "-c", "import time; time.sleep(3600)"]\n'
    engine.images.build(fileobj=io.BytesIO(dockerfile), tag="cvm-appliance/never-healthy:1", rm=True, forcerm=True)
    impatient = deploy_config.parent / "impatient.toml"
    impatient.write_text(deploy_config.read_text().replace("[service]\n", "[service]\nhealth_timeout = 8\n"))
    before = served_version(bootstrapped, bootstrapped_host)
    run = inv("deploy", "--version", "broken", "--image", "cvm-appliance/never-healthy:1", "--config", str(impatient))
    assert run.returncode == 4
    assert "health gate" in run.stderr
    assert "no 3 healthy answers in a row within 8s" in run.stderr
    assert "last API log lines" in run.stderr
    assert served_version(bootstrapped, bootstrapped_host) == before
    left = bootstrapped_host.run("docker ps -a --format '{{.Names}}' | grep -c api-broken || true").stdout.strip()
    assert left == "0"
