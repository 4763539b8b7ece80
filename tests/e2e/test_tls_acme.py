"""tls.mode "acme" end to end: the sandbox's certbot, Pebble on this machine, HTTP-01 through the sandbox's nginx.

One sandbox for the module, in the order an operator meets it: the first deploy while DNS points elsewhere (a
failed TLS step in one line, the placeholder served) → DNS pointed here, `inv tls.renew` issues → the site serves
Pebble's certificate → a forced renewal under load swaps it with no failed request → an unreachable challenge
fails in one line and the previous ACME certificate stays served. The tests run in this order and build on
each other.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance import sandbox as sandboxes
from appliance.config import load_config
from appliance.remote import RemoteHost, open_host
from tests.conftest import RUN_ID, SandboxFactory, bootstrap_sandbox, inv
from tests.e2e.conftest import bridge_gateway
from tests.e2e.pebble import UNREACHABLE, Pebble
from tests.e2e.traffic import Site, steady_load

pytestmark = pytest.mark.e2e

DOMAIN = f"acme.{RUN_ID}.test"
CERTS = "/opt/appliance/shared/certs"


@dataclass(frozen=True)
class AcmeRig:
    sandbox: sandboxes.Sandbox
    pebble: Pebble
    first_deploy: subprocess.CompletedProcess[str]

    def inv(self, *args: str) -> subprocess.CompletedProcess[str]:
        return inv(*args, "--config", str(self.sandbox.config_file))

    def host(self) -> RemoteHost:
        return open_host(load_config(self.sandbox.config_file))

    def trusting_pebble(self) -> ssl.SSLContext:
        root = self.pebble.issuer("roots").public_bytes(serialization.Encoding.PEM).decode()
        return ssl.create_default_context(cadata=root)


@dataclass(frozen=True)
class PebbleSite(Site):
    """The site trusting Pebble's root. Clients connect to 127.0.0.1, which the certificate does not name, so
    only the chain is checked here; `served_certificate(verified=True)` checks the name (SNI) too."""

    def tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca_pem)
        context.check_hostname = False
        return context


@pytest.fixture(scope="module")
def acme(module_sandbox_factory: SandboxFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeRig]:
    """A sandbox with domain and tls.mode "acme" at Pebble, bootstrapped, with v1 deployed while the domain's A
    record points where nothing answers."""
    sandbox = module_sandbox_factory("acme")
    pebble = Pebble(tmp_path_factory.mktemp("pebble"), bridge_gateway(), sandbox.http_port)
    try:
        pebble.start()
        pebble.point(DOMAIN, UNREACHABLE)
        toml = sandbox.config_file
        # Top-level keys before the first table.
        toml.write_text(
            f'domain = "{DOMAIN}"\n{toml.read_text()}\n[tls]\nmode = "acme"\nacme_email = "ops@{RUN_ID}.test"\n'
            f'acme_directory = "{pebble.directory}"\nacme_ca_file = "{pebble.tls_ca_file}"\n'
        )
        bootstrap_sandbox(sandbox)
        first = inv("deploy", "--version", "v1", "--config", str(toml), timeout=1500)
        yield AcmeRig(sandbox, pebble, first)
    finally:
        pebble.stop()


def served_certificate(rig: AcmeRig, verified: bool = False) -> x509.Certificate:
    """The certificate nginx presents for the domain (SNI); `verified`: Pebble's chain and the name checked."""
    if verified:
        context = rig.trusting_pebble()
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", rig.sandbox.https_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=DOMAIN) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def error_line(run: subprocess.CompletedProcess[str]) -> str:
    """The task's failure as the operator reads it: exactly one `error:` line."""
    lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, run.stdout + run.stderr
    return lines[0]


def unreachable_reason(rig: AcmeRig) -> str:
    """The end of Pebble's detail when its fetch of the challenge finds nothing listening."""
    return f"dial tcp {UNREACHABLE}:{rig.sandbox.http_port}: connect: connection refused"


def test_unreachable_first_issuance_fails_in_one_line_and_the_placeholder_serves(acme: AcmeRig) -> None:
    run = acme.first_deploy
    assert run.returncode == 4, run.stdout + run.stderr
    line = error_line(run)
    assert f"TLS certificate {DOMAIN} (ACME)" in line, line
    # Pebble's own words for the failed fetch, then what to check.
    assert unreachable_reason(acme) in line and "port 80 is open" in line, line

    placeholder = served_certificate(acme)
    assert placeholder.issuer == placeholder.subject == x509.Name.from_rfc4514_string(f"CN={DOMAIN}")
    with httpx.Client(verify=False, timeout=10) as client:  # noqa: S501 - the placeholder is self-signed
        health = client.get(f"https://127.0.0.1:{acme.sandbox.https_port}/api/health")
    assert health.status_code == 200, health.text


def test_issuance_once_dns_points_here_serves_pebbles_certificate(acme: AcmeRig) -> None:
    acme.pebble.point(DOMAIN, "127.0.0.1")
    run = acme.inv("tls.renew")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 changed" in run.stdout, run.stdout

    served = served_certificate(acme, verified=True)
    intermediate = acme.pebble.issuer("intermediates")
    assert served.issuer == intermediate.subject
    served.verify_directly_issued_by(intermediate)
    assert served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == [DOMAIN]
    with acme.host() as host:
        metric = host.run("cat /opt/appliance/shared/metrics/tls.prom").stdout
    assert f"appliance_tls_cert_expiry_timestamp_seconds {int(served.not_valid_after_utc.timestamp())}" in metric

    again = acme.inv("tls.renew")
    assert again.returncode == 0 and "0 changed" in again.stdout and "1 ok" in again.stdout, again.stdout


def test_the_renewal_timers_service_renews_a_due_certificate_through_the_hook(acme: AcmeRig) -> None:
    """What certbot.timer starts twice a day, run now: its drop-in's CA, the recorded webroot and deploy hook."""
    before = served_certificate(acme, verified=True)
    renewal = f"/etc/letsencrypt/renewal/{DOMAIN}.conf"
    with acme.host() as host:
        timer = host.run("systemctl is-enabled certbot.timer && systemctl is-active certbot.timer").stdout.split()
        # Time passing, in certbot's own terms: a renewal window longer than the certificate's life makes it due.
        host.run(f"sed -i 's/^# renew_before_expiry = 30 days/renew_before_expiry = 3650 days/' {renewal}")
        try:
            started = host.run("systemctl start certbot.service")
        finally:
            host.run(f"sed -i 's/^renew_before_expiry = 3650 days/# renew_before_expiry = 30 days/' {renewal}")
        journal = host.run("journalctl -u certbot.service --no-pager -n 20").stdout
    assert timer == ["enabled", "active"]
    assert started.exit_code == 0, started.stderr + journal
    after = served_certificate(acme, verified=True)
    assert after.serial_number != before.serial_number, journal


def test_forced_renewal_under_load_swaps_the_certificate_with_no_failed_request(acme: AcmeRig) -> None:
    before = served_certificate(acme, verified=True)
    root = acme.pebble.issuer("roots").public_bytes(serialization.Encoding.PEM).decode()
    site = PebbleSite(acme.sandbox.https_port, root)
    with steady_load(site, ["/api/health", "/"], per_second=20) as load:
        run = acme.inv("tls.renew", "--force")
        after = served_certificate(acme, verified=True)
        time.sleep(2)  # nginx's old workers finish their connections after the reload
    assert run.returncode == 0, run.stdout + run.stderr
    assert "forced renewal" in run.stdout, run.stdout
    assert after.serial_number != before.serial_number
    assert load.total > 20 and load.failed == 0, (load.outcomes, load.errors[:5])


def test_unreachable_renewal_fails_in_one_line_and_keeps_the_acme_certificate(acme: AcmeRig) -> None:
    before = served_certificate(acme, verified=True)
    acme.pebble.point(DOMAIN, UNREACHABLE)
    run = acme.inv("tls.renew", "--force")
    assert run.returncode == 4, run.stdout + run.stderr
    assert unreachable_reason(acme) in error_line(run)
    assert served_certificate(acme, verified=True).serial_number == before.serial_number
