"""Throwaway certificates for tests, made as a commercial CA would: a root, an intermediate, a server leaf."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Chain:
    """PEM texts: the root to trust, the bundle a CA hands out (leaf, then intermediate) and the leaf's key."""

    root: str
    bundle: str
    key: str
    leaf: str
    intermediate: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_name(domain: str) -> x509.GeneralName:
    """The leaf's subject alternative name: an IP address entry for an address (clients check those), else DNS."""
    try:
        return x509.IPAddress(ipaddress.ip_address(domain))
    except ValueError:
        return x509.DNSName(domain)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def issue_chain(domain: str, days: int = 90, not_before_days: int = 1, rsa_key: bool = True) -> Chain:
    """A chain for `domain` valid from `not_before_days` ago for `days` (negative: an expired leaf).

    The leaf's key is RSA in PKCS#1 form by default, as Tencent's nginx download ships it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    root_key = ec.generate_private_key(ec.SECP256R1())
    mid_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key: PrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if rsa_key
        else ec.generate_private_key(ec.SECP256R1())
    )
    ca = x509.BasicConstraints(ca=True, path_length=None)

    def build(
        subject: str,
        issuer: str,
        key: PrivateKey,
        signer: PrivateKey,
        extensions: list[tuple[x509.ExtensionType, bool]],
        start: datetime.datetime,
        end: datetime.datetime,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(_name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signer, hashes.SHA256())

    long_ago, far = now - datetime.timedelta(days=3650), now + datetime.timedelta(days=3650)
    root = build("Test Root CA", "Test Root CA", root_key, root_key, [(ca, True)], long_ago, far)
    mid = build("Test Intermediate CA", "Test Root CA", mid_key, root_key, [(ca, True)], long_ago, far)
    start = now - datetime.timedelta(days=not_before_days)
    leaf = build(
        domain,
        "Test Intermediate CA",
        leaf_key,
        mid_key,
        [
            (x509.SubjectAlternativeName([_alt_name(domain)]), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
        start,
        start + datetime.timedelta(days=days),
    )
    key_format = serialization.PrivateFormat.TraditionalOpenSSL
    key = leaf_key.private_bytes(serialization.Encoding.PEM, key_format, serialization.NoEncryption()).decode()
    return Chain(_pem(root), _pem(leaf) + _pem(mid), key, _pem(leaf), _pem(mid))
