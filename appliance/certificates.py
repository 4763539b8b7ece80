"""Certificates read and judged on the operator's side: PEM bundles, keys, names, validity (pure).

Files as certificate authorities hand them out are accepted as they come: a UTF-8 BOM, CRLF line ends,
a PKCS#1 ("BEGIN RSA PRIVATE KEY"), SEC1 or PKCS#8 key. What nginx gets is normalised: LF, leaf first.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
# A site certificate is issued again this long before it lapses, whoever issues it (the private CA; certbot's
# own default for ACME is the same 30 days, and the ACME step asks openssl for it).
RENEW_BEFORE = datetime.timedelta(days=30)


class CertificateProblem(ValueError):
    """Why a certificate or key cannot be used, in words an operator can act on."""


def _text(data: bytes) -> bytes:
    return data.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")


def parse_bundle(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, in file order."""
    try:
        return x509.load_pem_x509_certificates(_text(data))
    except ValueError:
        raise CertificateProblem("not a PEM certificate bundle") from None


def parse_key(data: bytes) -> PrivateKey:
    """An unencrypted RSA or EC private key in PEM (PKCS#1, SEC1 or PKCS#8)."""
    try:
        key = serialization.load_pem_private_key(_text(data), password=None)
    except TypeError:
        raise CertificateProblem("the key is encrypted; nginx needs it without a passphrase") from None
    except ValueError:
        raise CertificateProblem("not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CertificateProblem(f"a {type(key).__name__} key; browsers need an RSA or EC certificate")
    return key


def public_der(key: PrivateKey | x509.Certificate) -> bytes:
    """The SubjectPublicKeyInfo of a key or a certificate, to tell whether they belong together."""
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _dns_matches(pattern: str, name: str) -> bool:
    """RFC 6125: a wildcard stands for exactly one whole left-most label."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        first, _, rest = name.partition(".")
        return bool(first) and rest == pattern[2:]
    return pattern == name


def covers(cert: x509.Certificate, name: str) -> bool:
    """Whether browsers accept `cert` for `name` (a DNS name or an IP address), by its SANs alone."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return any(_dns_matches(pattern, name) for pattern in sans.get_values_for_type(x509.DNSName))
    return address in sans.get_values_for_type(x509.IPAddress)


def validity_problem(cert: x509.Certificate, now: datetime.datetime) -> str | None:
    if now >= cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return None


@dataclass(frozen=True)
class ProvidedCertificate:
    """A provided certificate as nginx gets it, and what is worth a warning about it."""

    fullchain: bytes
    key: bytes
    warning: str | None


def check_provided(cert_file: Path, key_file: Path, name: str, now: datetime.datetime) -> ProvidedCertificate:
    """The bundle and key, checked for serving `name`; CertificateProblem names the file and the fix."""

    def read(path: Path, setting: str) -> bytes:
        if not path.is_file():
            raise CertificateProblem(f"tls.{setting} {path}: not found: fix tls.{setting}")
        return path.read_bytes()

    cert_data, key_data = read(cert_file, "cert_file"), read(key_file, "key_file")
    try:
        bundle = parse_bundle(cert_data)
    except CertificateProblem as exc:
        raise CertificateProblem(
            f"tls.cert_file {cert_file}: {exc}: use the nginx download (NAME_bundle.crt)"
        ) from None
    try:
        key = parse_key(key_data)
    except CertificateProblem as exc:
        raise CertificateProblem(f"tls.key_file {key_file}: {exc}: use the nginx download's NAME.key") from None
    leaf = next((cert for cert in bundle if public_der(cert) == public_der(key)), None)
    if leaf is None:
        raise CertificateProblem(
            f"tls.key_file {key_file} does not match the certificate in {cert_file}: use the key issued with it"
        )
    problem = validity_problem(leaf, now)
    if problem:
        raise CertificateProblem(f"tls.cert_file {cert_file}: the certificate {problem}: renew it and download again")
    if not covers(leaf, name):
        raise CertificateProblem(
            f"tls.cert_file {cert_file}: the certificate does not cover {name} (its names: {', '.join(names(leaf))}): "
            f"use a certificate for {name}, or fix domain"
        )
    chain = [cert for cert in bundle if cert is not leaf]
    warning = None
    if leaf.issuer != leaf.subject and all(cert.subject != leaf.issuer for cert in chain):
        warning = (
            f"tls.cert_file {cert_file} lacks the intermediate certificate of {leaf.issuer.rfc4514_string()}: "
            "browsers on phones will fail; use the bundle with the chain (NAME_bundle.crt)"
        )
    return ProvidedCertificate(b"".join(pem(cert) for cert in (leaf, *chain)), _text(key_data), warning)


def names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate's SANs list, for messages."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ["none"]
    return [*sans.get_values_for_type(x509.DNSName), *map(str, sans.get_values_for_type(x509.IPAddress))]
