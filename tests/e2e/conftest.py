"""The e2e rig's destructive sandbox: backups on, deployed, and a local COS it reaches.

It is shared by the tests that change the stack (tests/e2e/test_backup.py wipes its volumes and
restores them; tests/e2e/test_reboot.py restarts it), so the run pays for one more bootstrap and deploy,
not one per test module. The read-only tests use tests/conftest.py's `deployed` instead.

The local COS (moto behind the COS shim, tests/cosfake) listens on the Docker bridge's gateway
address: the sandbox is a container on that bridge, so its host-side backup code reaches it there,
and the traffic never leaves this machine (127.0.0.1 inside the sandbox is the sandbox itself).
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from appliance import sandbox as sandboxes
from appliance.backup.cos import MB, CosStore, CosTarget
from appliance.config import Config, load_config
from appliance.remote import RemoteHost, open_host
from tests.certificates import Chain, issue_chain
from tests.conftest import RUN_ID, Deployed, SandboxFactory, bootstrap_sandbox, deploy_sandbox, free_port
from tests.cosfake import FakeCos
from tests.e2e.traffic import Site

SECRET_ID = "AKIDsandboxbackups"
SECRET_KEY = "sandbox-backup-secret"
BUCKET = "backups-1250000000"
# A Redis-only cron line is installed, on a day that never comes, so it cannot fire mid-test.
REDIS_SCHEDULE = "0 0 31 2 *"
# WAL archiving on (backup.pitr), with a short archive_timeout so the RPO test waits less than a minute.
ARCHIVE_TIMEOUT = 20


@dataclass(frozen=True)
class Rig:
    sandbox: sandboxes.Sandbox
    config: Config
    config_file: Path
    fake: FakeCos
    cos: CosStore


@pytest.fixture(scope="session")
def site(deployed: Deployed) -> Site:
    """The shared deployed sandbox as a browser reaches it, through nginx over TLS."""
    with open_host(load_config(deployed.sandbox.config_file)) as host:
        return Site(deployed.sandbox.https_port, host.run("cat /opt/appliance/shared/certs/ca.pem").stdout)


@pytest.fixture(scope="module")
def config(deployed: Deployed) -> Config:
    """The shared deployed sandbox's config."""
    return load_config(deployed.sandbox.config_file)


@pytest.fixture(scope="module")
def host(config: Config) -> Iterator[RemoteHost]:
    """An SSH session to the shared deployed sandbox, one a module; a module with a sandbox of its own defines its
    own `host`."""
    with open_host(config) as remote:
        yield remote


def bridge_gateway() -> str:
    """The host's address on Docker's default bridge: the engine names it, or (engines that leave it out of
    IPAM) the subnet's first address, which is the one Docker gives the bridge."""
    ipam = docker.from_env().networks.get("bridge").attrs["IPAM"]["Config"][0]
    return str(ipam.get("Gateway") or next(ipaddress.ip_network(ipam["Subnet"]).hosts()))


def bridge_cos(secret_id: str, secret_key: str, bucket: str, default_bucket: str = "") -> FakeCos:
    """A started local COS with `bucket`, on the Docker bridge's gateway where the sandbox reaches it."""
    fake = FakeCos(bridge_gateway(), free_port(), secret_id, secret_key, default_bucket)
    fake.create_bucket(bucket)
    return fake.start()


@pytest.fixture(scope="session")
def rig(sandbox_factory: SandboxFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """A sandbox of its own with backups to the local COS, bootstrapped and with v1 deployed."""
    fake = bridge_cos(SECRET_ID, SECRET_KEY, BUCKET)
    sandbox = sandbox_factory("destructive")
    extra = f'redis_schedule = "{REDIS_SCHEDULE}"\npitr = true\narchive_timeout = {ARCHIVE_TIMEOUT}\n'
    config = with_backups(sandbox, tmp_path_factory.mktemp("backup"), fake, extra)
    bootstrap_sandbox(sandbox)
    deploy_sandbox(sandbox)
    endpoint = f"http://{fake.address}:{fake.port}"
    cos = CosStore(CosTarget(BUCKET, "ap-shanghai", SECRET_ID, SECRET_KEY, endpoint, 1 * MB))
    yield Rig(sandbox, config, sandbox.config_file, fake, cos)
    fake.stop()


def with_backups(sandbox: sandboxes.Sandbox, folder: Path, fake: FakeCos, extra: str = "") -> Config:
    """The sandbox's config with backups on, to `fake`'s BUCKET, under a fresh age key in `folder` (`extra`: more
    lines of the [backup] table); the COS keys go to its secrets file."""
    subprocess.run(["age-keygen", "-o", str(folder / "key.txt")], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(folder / "key.txt")], check=True, capture_output=True, text=True
    ).stdout.strip()
    with sandbox.config_file.open("a", encoding="utf-8") as toml:
        toml.write(
            f'\n[backup]\nenabled = true\ncos_bucket = "{BUCKET}"\ncos_endpoint = "http://{fake.address}:{fake.port}"\n'
            f'age_recipient = "{recipient}"\nage_identity_file = "{folder / "key.txt"}"\npart_size_mb = 1\n{extra}'
        )
    config = load_config(sandbox.config_file)
    with config.secrets_path.open("a", encoding="utf-8") as secrets:
        secrets.write(f"COS_SECRET_ID={SECRET_ID}\nCOS_SECRET_KEY={SECRET_KEY}\n")
    return config


ARTIFACT_BUCKET = "artifacts-1250000000"
ARTIFACT_SECRET_ID = "AKIDsandboxartifacts"
ARTIFACT_SECRET_KEY = "sandbox-artifact-secret"


@dataclass(frozen=True)
class DayOne:
    """A production-shaped sandbox: a domain, a provided certificate (as a CA's nginx download comes),
    uploads in the local COS. Its tests may change its certificate and COS key but must put them back."""

    sandbox: sandboxes.Sandbox
    config: Config
    domain: str
    chain: Chain
    cert_file: Path
    key_file: Path
    fake: FakeCos


@pytest.fixture(scope="session")
def day_one(sandbox_factory: SandboxFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DayOne]:
    """Bootstrapped and deployed once for the day-one tests (tls.mode "provided", artifact_storage "cos")."""
    folder = tmp_path_factory.mktemp("day-one")
    domain = f"agents.{RUN_ID}.test"
    chain = issue_chain(domain)
    # Tencent's nginx download: DOMAIN_bundle.crt (leaf + intermediate) and DOMAIN.key, CRLF line ends.
    cert_file, key_file = folder / f"{domain}_bundle.crt", folder / f"{domain}.key"
    cert_file.write_bytes(chain.bundle.replace("\n", "\r\n").encode())
    key_file.write_bytes(chain.key.replace("\n", "\r\n").encode())
    fake = bridge_cos(ARTIFACT_SECRET_ID, ARTIFACT_SECRET_KEY, ARTIFACT_BUCKET, default_bucket=ARTIFACT_BUCKET)
    sandbox = sandbox_factory("day-one")
    text = sandbox.config_file.read_text(encoding="utf-8")
    # Top-level keys go before the first table; per-environment tables after the file's last one.
    sandbox.config_file.write_text(
        f'domain = "{domain}"\n{text}\n[tls]\nmode = "provided"\ncert_file = "{cert_file}"\nkey_file = "{key_file}"\n'
        f'\n[environments.sandbox.service]\nartifact_storage = "cos"\nartifact_cos_bucket = "{ARTIFACT_BUCKET}"\n'
        f'artifact_cos_endpoint = "http://{fake.address}:{fake.port}"\n',
        encoding="utf-8",
    )
    config = load_config(sandbox.config_file)
    with config.secrets_path.open("a", encoding="utf-8") as secrets:
        secrets.write(f"COS_SECRET_ID={ARTIFACT_SECRET_ID}\nCOS_SECRET_KEY={ARTIFACT_SECRET_KEY}\n")
    bootstrap_sandbox(sandbox)
    deploy_sandbox(sandbox)
    yield DayOne(sandbox, config, domain, chain, cert_file, key_file, fake)
    fake.stop()
