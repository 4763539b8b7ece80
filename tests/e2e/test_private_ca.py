"""The private CA's key stays on the operator's machine: the host's whole filesystem is searched for it."""

from __future__ import annotations

import re
import socket
import ssl
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.config import Config, load_config
from appliance.private_ca import CA_CERT, CA_KEY
from appliance.remote import RemoteHost, open_host
from appliance.shell import sh
from tests.conftest import Deployed, inv

pytestmark = pytest.mark.e2e

CERTS = "/opt/appliance/shared/certs"
PLANTED = "/var/tmp/planted-ca-key.pem"  # a known copy, so the search is shown to find one


def key_traces(config: Config) -> list[str]:
    """Distinctive pieces of the CA key: each base64 line of its PEM, and its private scalar in hex."""
    pem = (config.ca_path / CA_KEY).read_bytes()
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    lines = [line for line in pem.decode().splitlines() if len(line) >= 40 and not line.startswith("-----")]
    return [*lines, f"{key.private_numbers().private_value:064x}"]


def files_holding(host: RemoteHost, traces: list[str]) -> list[str]:
    """Every file on the host (Docker's volumes and layers included; not /proc, /sys, /dev) with a trace."""
    patterns = " ".join(sh("-e", trace) for trace in traces)
    search = host.run(
        "find / \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -type f -print0 "
        f"| xargs -0 grep -lsiF {patterns} || true",
        timeout=900,
    )
    return search.stdout.split()


def test_the_ca_key_is_nowhere_on_the_host(deployed: Deployed) -> None:
    config = load_config(deployed.sandbox.config_file)
    traces = key_traces(config)
    with open_host(config) as host:
        started = time.monotonic()
        assert host.upload(PLANTED, (config.ca_path / CA_KEY).read_bytes(), 0o600, "root", "root").exit_code == 0
        try:
            found = files_holding(host, traces)
        finally:
            host.run(sh("rm", "-f", PLANTED))
        print(f"searched the host's filesystem in {time.monotonic() - started:.0f}s")
        listing = host.run(f"stat -c '%a %n' {CERTS}/*").stdout
    assert found == [PLANTED]  # the search finds a copy, and there is no other
    assert set(listing.splitlines()) == {
        f"644 {CERTS}/ca.pem",
        f"644 {CERTS}/fullchain.pem",
        f"600 {CERTS}/privkey.pem",
    }


def test_the_site_chains_to_the_ca_on_the_operators_machine(deployed: Deployed) -> None:
    config = load_config(deployed.sandbox.config_file)
    context = ssl.create_default_context(cafile=str(config.ca_path / CA_CERT))
    with (
        socket.create_connection(("127.0.0.1", deployed.sandbox.https_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_an_old_hosts_ca_key_is_deleted_once_and_the_certificate_kept(deployed: Deployed) -> None:
    config = load_config(deployed.sandbox.config_file)
    with open_host(config) as host:
        host.run(f"echo old-key > {CERTS}/ca-key.pem && echo 01 > {CERTS}/ca.srl && chmod 600 {CERTS}/ca-key.pem")
        served = host.run(f"sha256sum {CERTS}/fullchain.pem {CERTS}/privkey.pem").stdout
        migrated = inv("bootstrap", "--config", str(deployed.sandbox.config_file))
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        assert re.search(
            r"TLS certificate for 127\.0\.0\.1 \(private CA\)\s+changed\s+\S+\s+delete the CA key an older version",
            migrated.stdout,
        ), migrated.stdout
        assert host.run(f"ls {CERTS}").stdout.split() == ["ca.pem", "fullchain.pem", "privkey.pem"]
        assert host.run(f"sha256sum {CERTS}/fullchain.pem {CERTS}/privkey.pem").stdout == served
    again = inv("bootstrap", "--config", str(deployed.sandbox.config_file))
    assert re.search(r"TLS certificate for 127\.0\.0\.1 \(private CA\)\s+ok", again.stdout), again.stdout
