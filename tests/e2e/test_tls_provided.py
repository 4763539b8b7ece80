"""A provided certificate (a Tencent nginx download) is served as it comes; a mismatched key changes nothing."""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.remote import open_host
from tests.certificates import issue_chain
from tests.conftest import inv
from tests.e2e.conftest import DayOne

pytestmark = pytest.mark.e2e

CERTS = "/opt/appliance/shared/certs"


def served_leaf(day_one: DayOne) -> bytes:
    """The DER certificate nginx presents to a client that trusts only the provided chain's root."""
    context = ssl.create_default_context(cadata=day_one.chain.root)
    with (
        socket.create_connection(("127.0.0.1", day_one.sandbox.https_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=day_one.domain) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def provided_leaf(day_one: DayOne) -> bytes:
    return x509.load_pem_x509_certificate(day_one.chain.leaf.encode()).public_bytes(serialization.Encoding.DER)


def certs_digests(day_one: DayOne) -> str:
    with open_host(day_one.config) as host:
        return host.run(f"cd {CERTS} && sha256sum * && stat -c '%a %n' *").stdout


def test_the_provided_certificate_is_served_and_a_second_bootstrap_leaves_it(day_one: DayOne) -> None:
    assert hashlib.sha256(served_leaf(day_one)).hexdigest() == hashlib.sha256(provided_leaf(day_one)).hexdigest()
    assert "644 fullchain.pem" in certs_digests(day_one) and "600 privkey.pem" in certs_digests(day_one)
    again = inv("bootstrap", "--config", str(day_one.sandbox.config_file))
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"TLS certificate \(provided\)\s+ok", again.stdout), again.stdout  # CRLF normalised once


def test_a_mismatched_key_is_refused_in_one_line_before_anything_changes(day_one: DayOne, tmp_path: Path) -> None:
    before = certs_digests(day_one)
    other_key = tmp_path / f"{day_one.domain}.key"
    other_key.write_text(issue_chain(day_one.domain).key)
    variant = day_one.sandbox.config_file.with_name("mismatched-key.toml")
    variant.write_text(
        day_one.sandbox.config_file.read_text().replace(str(day_one.key_file), str(other_key)), encoding="utf-8"
    )
    try:
        run = inv("bootstrap", "--config", str(variant))
    finally:
        variant.unlink()
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr == (
        f"error: {variant}: tls.key_file {other_key} does not match the certificate in {day_one.cert_file}: "
        "use the key issued with it\n"
    )
    assert "changed" not in run.stdout
    assert certs_digests(day_one) == before
    assert served_leaf(day_one) == provided_leaf(day_one)
