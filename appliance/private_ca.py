"""The appliance's private CA (tls.mode "self-signed"): its key never leaves the operator's machine.

The CA lives in `Config.ca_path` (folder 0700, key 0600). It is name-constrained to the hosts' addresses
and the domain, so that a browser told to trust it trusts nothing else it might sign; it is made again
only when those constraints no longer cover the hosts. Leaves are issued here, and the host receives only
the leaf, its key and the public CA certificate.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.certificates import (
    RENEW_BEFORE,
    CertificateProblem,
    covers,
    parse_bundle,
    parse_key,
    pem,
    public_der,
)
from appliance.config import Config
from appliance.errors import ConfigError

LEAF_DAYS = 397  # browsers' limit for a server certificate's lifetime
CA_DAYS = 3650
CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
# What the host gets, and its modes: the leaf's key, leaf + CA for nginx, the public CA for operators.
PRIVKEY, FULLCHAIN = "privkey.pem", "fullchain.pem"
ISSUED_MODES = {PRIVKEY: 0o600, FULLCHAIN: 0o644, CA_CERT: 0o644}

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
EVERY_ADDRESS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


@dataclass(frozen=True)
class Scope:
    """What the CA may vouch for: these addresses (one each) and these DNS names (with their subdomains)."""

    addresses: tuple[IpNetwork, ...]
    dns_names: tuple[str, ...]

    def name_constraints(self) -> x509.NameConstraints:
        """Permit exactly the scope; a kind of name the scope lacks is excluded altogether."""
        permitted: list[x509.GeneralName] = [x509.IPAddress(net) for net in self.addresses]
        permitted += [x509.DNSName(name) for name in self.dns_names]
        excluded: list[x509.GeneralName] = []
        if not self.addresses:
            excluded += [x509.IPAddress(net) for net in EVERY_ADDRESS]
        if not self.dns_names:
            excluded.append(x509.DNSName(""))  # the empty name matches every DNS name
        return x509.NameConstraints(permitted_subtrees=permitted or None, excluded_subtrees=excluded or None)


def scope_of(config: Config) -> Scope:
    """The domain and every host address: an IP as a /32 (/128), a host name as a DNS name."""
    settings = config.settings
    addresses: list[IpNetwork] = []
    dns_names = [settings.domain] if settings.domain else []
    for host in settings.hosts:
        try:
            addresses.append(ipaddress.ip_network(host.address))
        except ValueError:
            dns_names.append(host.address.lower())
    return Scope(tuple(dict.fromkeys(addresses)), tuple(dict.fromkeys(dns_names)))


def ca_serves(ca: x509.Certificate, scope: Scope, now: datetime.datetime) -> bool:
    """Whether the CA may sign for the whole scope, for a full leaf lifetime from now."""
    if ca.not_valid_after_utc < now + datetime.timedelta(days=LEAF_DAYS):
        return False
    try:
        constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return False
    permitted = constraints.permitted_subtrees or []
    networks = [name.value for name in permitted if isinstance(name, x509.IPAddress)]
    domains = [name.value.lower() for name in permitted if isinstance(name, x509.DNSName)]
    addresses_in = all(
        any(net.version == address.version and address.subnet_of(net) for net in networks)  # type: ignore[arg-type]
        for address in scope.addresses
    )
    return addresses_in and all(
        any(name == domain or name.endswith(f".{domain}") for domain in domains) for name in scope.dns_names
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def renewal_reason(
    host_chain: str | None, host_public_key: str | None, ca: x509.Certificate | None, name: str, now: datetime.datetime
) -> str | None:
    """Why the host's certificate must be issued again, or None when it may stay (pure)."""
    if not host_chain:
        return "no certificate on the host"
    try:
        leaf = parse_bundle(host_chain.encode())[0]
    except CertificateProblem:
        return "the host's certificate is unreadable"
    if ca is None:
        return "the CA is new"
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "not issued by the current CA"
    if not covers(leaf, name):
        return f"does not cover {name}"
    if leaf.not_valid_after_utc - now < RENEW_BEFORE:
        return f"expires {leaf.not_valid_after_utc:%Y-%m-%d}"
    if not host_public_key or _public_key_der(host_public_key) != public_der(leaf):
        return "the host's key does not match its certificate"
    return None


def _public_key_der(text: str) -> bytes | None:
    try:
        key = serialization.load_pem_public_key(text.encode())
    except ValueError:
        return None
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _url_host(name: str) -> str:
    return f"[{name}]" if ":" in name else name


@dataclass(frozen=True)
class OperatorCa:
    """The CA's folder on the operator's machine and the scope it must cover."""

    folder: Path
    scope: Scope
    label: str

    def why_new(self, now: datetime.datetime) -> str | None:
        """Why issuing would make a new CA first (one line for the operator), None when the CA serves."""
        if self.current(now) is not None:
            return None
        if not (self.folder / CA_CERT).exists():
            return f"a new private CA in {self.folder}"
        wanted = ", ".join([*map(str, self.scope.addresses), *self.scope.dns_names])
        return (
            f"a new private CA in {self.folder}: the old one does not cover {wanted} (or expires soon); "
            f"browsers must trust the new {CA_CERT}"
        )

    def current(self, now: datetime.datetime) -> x509.Certificate | None:
        """The CA certificate if it exists and still serves the scope; None when a new CA is due (read-only)."""
        try:
            ca = parse_bundle((self.folder / CA_CERT).read_bytes())[0]
        except (OSError, CertificateProblem):
            return None
        return ca if ca_serves(ca, self.scope, now) and (self.folder / CA_KEY).is_file() else None

    def ensure(self, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The CA, made (again) when it does not serve the scope."""
        ca = self.current(now)
        if ca is not None:
            key = parse_key((self.folder / CA_KEY).read_bytes())
            if isinstance(key, ec.EllipticCurvePrivateKey) and public_der(key) == public_der(ca):
                return ca, key
        return self._create(now)

    def _create(self, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.label),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{self.label} appliance CA {now:%Y-%m-%d}"),
            ]
        )
        ca = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(self.scope.name_constraints(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.folder.chmod(0o700)
            _write_private(self.folder / CA_KEY, _key_pem(key))
            (self.folder / CA_CERT).write_bytes(pem(ca))
        except OSError as exc:
            raise ConfigError(
                f"tls.ca_dir {self.folder}: cannot keep the private CA there ({exc}): fix tls.ca_dir"
            ) from None
        return ca, key

    def issue(self, name: str, now: datetime.datetime) -> dict[str, bytes]:
        """The host's files for `name` by their names in ISSUED_MODES, all PEM: a new key, a leaf signed by the CA
        (made first if due) followed by the CA, and the CA's public certificate."""
        ca, ca_key = self.ensure(now)
        key = ec.generate_private_key(ec.SECP256R1())
        start = now - datetime.timedelta(hours=1)
        # A one-label CN: OpenSSL checks a dotted CN against the DNS constraints, which may exclude all names.
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.label)])
        leaf = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([_san(name)]), critical=False)
            # testssl.sh grades a certificate without a revocation pointer down; nothing serves it.
            .add_extension(
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            [x509.UniformResourceIdentifier(f"http://{_url_host(name)}/crl.pem")], None, None, None
                        )
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return {PRIVKEY: _key_pem(key), FULLCHAIN: pem(leaf) + pem(ca), CA_CERT: pem(ca)}


# x509.KeyUsage's nine flags, all to be given: a CA signs certificates and CRLs, a leaf only signs (TLS 1.3 and
# ECDHE need no key_encipherment).
_KEY_USAGES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
               "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    wanted = {"key_cert_sign", "crl_sign"} if cert_sign else {"digital_signature"}
    return x509.KeyUsage(**{flag: flag in wanted for flag in _KEY_USAGES})


def _write_private(path: Path, content: bytes) -> None:
    """Write a file that is 0600 from its first byte."""
    temporary = path.with_name(f".{path.name}.new")
    temporary.unlink(missing_ok=True)
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(content)
    temporary.replace(path)


def operator_ca(config: Config) -> OperatorCa:
    return OperatorCa(config.ca_path, scope_of(config), config.settings.name)


def issued_file_names() -> tuple[str, ...]:
    """The files `IssuedFiles` carries, as the host keeps them in its certs folder."""
    return tuple(ISSUED_MODES)


@dataclass(frozen=True)
class IssuedFiles:
    """A byte source: the issued files as a tar archive (names, modes), made only when it is read."""

    ca: OperatorCa
    name: str
    size: int = 0

    def chunks(self) -> Iterator[bytes]:
        issued = self.ca.issue(self.name, _now())
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for filename, content in issued.items():
                info = tarfile.TarInfo(filename)
                info.size, info.mode, info.mtime = len(content), ISSUED_MODES[filename], int(_now().timestamp())
                tar.addfile(info, io.BytesIO(content))
        yield archive.getvalue()
