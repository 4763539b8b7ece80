"""Provided certificates checked before a host is touched; the private CA, its constraints and its renewals."""

from __future__ import annotations

import datetime
import io
import ipaddress
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.bootstrap.tls import (
    PrivateCaCertificate,
    ProvidedCertificate,
    install_issued,
    private_ca_certificate,
    tls_steps,
)
from appliance.certificates import CertificateProblem, check_provided, covers, parse_bundle
from appliance.config import Config, load_config
from appliance.errors import ConfigError
from appliance.private_ca import (
    CA_CERT,
    CA_KEY,
    LEAF_DAYS,
    IssuedFiles,
    OperatorCa,
    Scope,
    ca_serves,
    renewal_reason,
    scope_of,
)
from appliance.steps import Fact, Note, Run, Stream, Upload
from tests.certificates import issue_chain
from tests.conftest import REPO, inv

pytestmark = pytest.mark.unit

DOMAIN = "agents.example.test"
NOW = datetime.datetime.now(datetime.timezone.utc)


def tencent_download(folder: Path, chain_bundle: str, key: str, bom: bool = True) -> tuple[Path, Path]:
    """A Tencent-style nginx download: DOMAIN_bundle.crt and DOMAIN.key, CRLF line ends (and a BOM)."""
    cert_file, key_file = folder / f"{DOMAIN}_bundle.crt", folder / f"{DOMAIN}.key"
    prefix = b"\xef\xbb\xbf" if bom else b""
    cert_file.write_bytes(prefix + chain_bundle.replace("\n", "\r\n").encode())
    key_file.write_bytes(prefix + key.replace("\n", "\r\n").encode())
    return cert_file, key_file


def refusal(cert_file: Path, key_file: Path, name: str = DOMAIN) -> str:
    with pytest.raises(CertificateProblem) as refused:
        check_provided(cert_file, key_file, name, NOW)
    message = str(refused.value)
    assert "\n" not in message
    return message


# Provided certificates


def test_a_tencent_download_is_taken_as_it_comes_and_served_with_lf_leaf_first(tmp_path: Path) -> None:
    chain = issue_chain(DOMAIN)
    cert_file, key_file = tencent_download(tmp_path, chain.intermediate + chain.leaf, chain.key)  # chain first
    provided = check_provided(cert_file, key_file, DOMAIN, NOW)
    assert provided.fullchain == (chain.leaf + chain.intermediate).encode()
    assert provided.key == chain.key.encode()
    assert b"\r" not in provided.key and provided.key.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert provided.warning is None


def test_an_ec_key_in_pkcs8_is_accepted(tmp_path: Path) -> None:
    chain = issue_chain(DOMAIN, rsa_key=False)
    key = serialization.load_pem_private_key(chain.key.encode(), None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_file, key_file = tencent_download(tmp_path, chain.bundle, pkcs8.decode(), bom=False)
    assert check_provided(cert_file, key_file, DOMAIN, NOW).key == pkcs8


def test_a_key_of_another_certificate_is_refused_naming_the_key_file(tmp_path: Path) -> None:
    cert_file, _ = tencent_download(tmp_path, issue_chain(DOMAIN).bundle, issue_chain(DOMAIN).key)
    other_key = tmp_path / "other.key"
    other_key.write_text(issue_chain(DOMAIN).key)
    message = refusal(cert_file, other_key)
    assert message == (
        f"tls.key_file {other_key} does not match the certificate in {cert_file}: use the key issued with it"
    )


def test_an_expired_or_not_yet_valid_certificate_is_refused(tmp_path: Path) -> None:
    expired = issue_chain(DOMAIN, days=30, not_before_days=40)
    cert_file, key_file = tencent_download(tmp_path, expired.bundle, expired.key)
    assert "the certificate expired on " in refusal(cert_file, key_file)
    assert refusal(cert_file, key_file).endswith(": renew it and download again")
    future = issue_chain(DOMAIN, not_before_days=-2)
    cert_file, key_file = tencent_download(tmp_path, future.bundle, future.key)
    assert "the certificate not valid before " in refusal(cert_file, key_file)


def test_a_certificate_for_another_name_is_refused_with_its_names(tmp_path: Path) -> None:
    chain = issue_chain("other.example.test")
    cert_file, key_file = tencent_download(tmp_path, chain.bundle, chain.key)
    assert refusal(cert_file, key_file) == (
        f"tls.cert_file {cert_file}: the certificate does not cover {DOMAIN} (its names: other.example.test): "
        f"use a certificate for {DOMAIN}, or fix domain"
    )
    assert "does not cover 203.0.113.7" in refusal(cert_file, key_file, "203.0.113.7")


def test_a_wildcard_covers_one_label_only() -> None:
    (leaf, _) = parse_bundle(issue_chain("*.example.test").bundle.encode())
    assert covers(leaf, "agents.example.test")
    assert covers(leaf, "AGENTS.example.test.")
    assert not covers(leaf, "example.test")
    assert not covers(leaf, "a.agents.example.test")
    assert not covers(leaf, "203.0.113.7")


def test_files_that_are_not_pem_are_refused(tmp_path: Path) -> None:
    chain = issue_chain(DOMAIN)
    cert_file, key_file = tencent_download(tmp_path, chain.bundle, chain.key)
    der = tmp_path / "leaf.der"
    der.write_bytes(parse_bundle(chain.leaf.encode())[0].public_bytes(serialization.Encoding.DER))
    assert refusal(der, key_file) == (
        f"tls.cert_file {der}: not a PEM certificate bundle: use the nginx download (NAME_bundle.crt)"
    )
    assert refusal(cert_file, cert_file) == (
        f"tls.key_file {cert_file}: not a PEM private key: use the nginx download's NAME.key"
    )
    assert refusal(cert_file, tmp_path / "absent.key") == (
        f"tls.key_file {tmp_path / 'absent.key'}: not found: fix tls.key_file"
    )


def test_a_bundle_without_the_intermediate_is_a_warning_a_self_issued_one_is_not(tmp_path: Path) -> None:
    chain = issue_chain(DOMAIN)
    cert_file, key_file = tencent_download(tmp_path, chain.leaf, chain.key)
    warning = check_provided(cert_file, key_file, DOMAIN, NOW).warning
    assert warning == (
        f"tls.cert_file {cert_file} lacks the intermediate certificate of CN=Test Intermediate CA: "
        "browsers on phones will fail; use the bundle with the chain (NAME_bundle.crt)"
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, DOMAIN)])
    self_issued = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(DOMAIN)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file.write_bytes(self_issued.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    assert check_provided(cert_file, key_file, DOMAIN, NOW).warning is None


@pytest.fixture()
def example(tmp_path: Path) -> Path:
    """The example config (its staging environment: self-signed, one host at 203.0.113.20) in a folder of its own."""
    config_file = tmp_path / "appliance.toml"
    shutil.copy(REPO / "appliance.example.toml", config_file)
    return config_file


def with_provided(config_file: Path, cert_file: Path, key_file: Path, domain: str = "") -> Config:
    text = config_file.read_text(encoding="utf-8").replace('mode = "self-signed"', 'mode = "provided"', 1)
    text = text.replace('domain = ""', f'domain = "{domain}"', 1)
    text = text.replace("# cert_file = ", f'cert_file = "{cert_file}"\n# ', 1)
    config_file.write_text(text.replace("# key_file = ", f'key_file = "{key_file}"\n# ', 1), encoding="utf-8")
    return load_config(config_file, "staging")


def test_bootstrap_steps_refuse_a_mismatched_key_as_a_config_error(example: Path, tmp_path: Path) -> None:
    chain = issue_chain(DOMAIN)
    cert_file, _ = tencent_download(tmp_path, chain.bundle, chain.key)
    other = tmp_path / "other.key"
    other.write_text(issue_chain(DOMAIN).key)
    config = with_provided(example, cert_file, other, DOMAIN)
    with pytest.raises(ConfigError) as refused:
        tls_steps(config)
    assert str(refused.value).startswith(f"{example}: tls.key_file {other} does not match")
    assert refused.value.exit_code == 2


def test_inv_render_refuses_a_mismatched_key_in_one_line(example: Path, tmp_path: Path) -> None:
    chain = issue_chain(DOMAIN)
    cert_file, key_file = tencent_download(tmp_path, chain.bundle, chain.key)
    with_provided(example, cert_file, key_file)
    secrets = tmp_path / "secrets.staging.env"
    secrets.write_text("AI_API_KEY=sk-test\n")
    secrets.chmod(0o600)
    run = inv("render", "--out", str(tmp_path / "out"), "--config", str(example), "--env", "staging")
    assert run.returncode == 2
    assert run.stderr == (
        f"error: {example}: tls.cert_file {cert_file}: the certificate does not cover 203.0.113.20 "
        f"(its names: {DOMAIN}): use a certificate for 203.0.113.20, or fix domain\n"
    )
    assert not (tmp_path / "out").exists()


def test_provided_step_uploads_what_nginx_needs_and_repeats_its_warning(example: Path, tmp_path: Path) -> None:
    chain = issue_chain(DOMAIN)
    cert_file, key_file = tencent_download(tmp_path, chain.leaf, chain.key)  # no intermediate
    left_behind, step = tls_steps(with_provided(example, cert_file, key_file, DOMAIN))
    assert left_behind.name == "no ACME certificate left renewing"
    assert isinstance(step, ProvidedCertificate)
    absent = {f"{index}:{probe}": Fact("", 1) for index in (0, 1) for probe in ("stat", "sha256")}
    actions = step.plan(absent)
    uploads = [action for action in actions if isinstance(action, Upload)]
    assert [(upload.path, upload.mode) for upload in uploads] == [
        ("/opt/appliance/shared/certs/fullchain.pem", 0o644),
        ("/opt/appliance/shared/certs/privkey.pem", 0o600),
    ]
    assert uploads[0].content == chain.leaf.encode()
    assert isinstance(actions[-1], Note) and actions[-1].why.startswith(f"warning: tls.cert_file {cert_file} lacks")


# The private CA


def test_scope_is_the_host_addresses_and_the_domain(example: Path) -> None:
    config = load_config(example, "staging")
    assert scope_of(config) == Scope((ipaddress.ip_network("203.0.113.20/32"),), ())
    settings = config.settings.model_copy(
        update={
            "domain": DOMAIN,
            "hosts": [config.settings.hosts[0].model_copy(update={"address": "2001:db8::7"})],
        }
    )
    wider = Config(config.path, config.env, config.environments, settings)
    assert scope_of(wider) == Scope((ipaddress.ip_network("2001:db8::7/128"),), (DOMAIN,))


def ca_for(folder: Path, *addresses: str, dns: tuple[str, ...] = ()) -> OperatorCa:
    return OperatorCa(folder, Scope(tuple(ipaddress.ip_network(a) for a in addresses), dns), "agents")


def issued_files(ca: OperatorCa, name: str) -> dict[str, tuple[bytes, int]]:
    with tarfile.open(fileobj=io.BytesIO(b"".join(IssuedFiles(ca, name).chunks()))) as archive:
        return {
            member.name: (archive.extractfile(member).read(), member.mode)  # type: ignore[union-attr]
            for member in archive.getmembers()
        }


def test_the_ca_is_made_once_private_and_name_constrained(tmp_path: Path) -> None:
    ca = ca_for(tmp_path / "ca", "203.0.113.20/32")
    files = issued_files(ca, "203.0.113.20")
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "ca" / CA_KEY).stat().st_mode) == 0o600
    key_before = (tmp_path / "ca" / CA_KEY).read_bytes()
    cert = x509.load_pem_x509_certificate((tmp_path / "ca" / CA_CERT).read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    constraints = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [x509.IPAddress(ipaddress.ip_network("203.0.113.20/32"))]
    assert constraints.value.excluded_subtrees == [x509.DNSName("")]  # no DNS name at all
    assert set(files) == {"privkey.pem", "fullchain.pem", "ca.pem"}
    assert files["ca.pem"][0] == (tmp_path / "ca" / CA_CERT).read_bytes()
    assert CA_KEY not in files and key_before not in b"".join(content for content, _ in files.values())
    issued_files(ca, "203.0.113.20")
    assert (tmp_path / "ca" / CA_KEY).read_bytes() == key_before  # a second issue keeps the CA


def test_the_leaf_verifies_under_openssl_and_a_foreign_name_does_not(tmp_path: Path) -> None:
    ca = ca_for(tmp_path / "ca", "203.0.113.20/32", dns=(DOMAIN,))
    files = issued_files(ca, DOMAIN)
    (tmp_path / "fullchain.pem").write_bytes(files["fullchain.pem"][0])
    verify = ["openssl", "verify", "-CAfile", str(tmp_path / "ca" / CA_CERT)]
    ok = subprocess.run([*verify, str(tmp_path / "fullchain.pem")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    leaf, issuer = parse_bundle(files["fullchain.pem"][0])
    assert issuer == x509.load_pem_x509_certificate(files["ca.pem"][0])
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(days=LEAF_DAYS)
    assert leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    usage = {cert: cert.extensions.get_extension_for_class(x509.KeyUsage).value for cert in (leaf, issuer)}
    assert usage[leaf].digital_signature and not usage[leaf].key_cert_sign and not usage[leaf].key_encipherment
    assert usage[issuer].key_cert_sign and usage[issuer].crl_sign and not usage[issuer].digital_signature
    assert covers(leaf, DOMAIN) and files["privkey.pem"][1] == 0o600 and files["fullchain.pem"][1] == 0o644
    # The CA key (operator side) signs a leaf for a name outside its scope: verifiers refuse it.
    ca_key = serialization.load_pem_private_key((tmp_path / "ca" / CA_KEY).read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    forged = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(issuer.subject)
        .public_key(leaf.public_key())
        .serial_number(2)
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bank.example.com")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "forged.pem").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    refused = subprocess.run([*verify, str(tmp_path / "forged.pem")], capture_output=True, text=True)
    assert refused.returncode != 0 and "permitted subtree violation" in refused.stderr


def test_the_ca_is_made_again_only_when_it_no_longer_covers_the_hosts(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    first = ca_for(folder, "203.0.113.20/32")
    assert first.why_new(NOW) == f"a new private CA in {folder}"
    issued_files(first, "203.0.113.20")
    assert first.why_new(NOW) is None
    original = (folder / CA_CERT).read_bytes()
    narrower = OperatorCa(folder, Scope((), ()), "agents")
    assert narrower.why_new(NOW) is None  # covers more than needed: kept
    moved = ca_for(folder, "203.0.113.99/32")
    assert moved.why_new(NOW) == (
        f"a new private CA in {folder}: the old one does not cover 203.0.113.99/32 (or expires soon); "
        "browsers must trust the new ca.pem"
    )
    issued_files(moved, "203.0.113.99")
    assert (folder / CA_CERT).read_bytes() != original
    renewed = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
    assert ca_serves(renewed, moved.scope, NOW) and not ca_serves(renewed, first.scope, NOW)


def test_renewal_is_due_only_for_a_reason(tmp_path: Path) -> None:
    ca = ca_for(tmp_path / "ca", "203.0.113.20/32")
    files = issued_files(ca, "203.0.113.20")
    chain = files["fullchain.pem"][0].decode()
    key = serialization.load_pem_private_key(files["privkey.pem"][0], None)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    current = ca.current(NOW)
    assert current is not None
    assert renewal_reason(chain, public.decode(), current, "203.0.113.20", NOW) is None
    assert renewal_reason(None, None, current, "203.0.113.20", NOW) == "no certificate on the host"
    assert renewal_reason("garbage", None, current, "203.0.113.20", NOW) == "the host's certificate is unreadable"
    assert renewal_reason(chain, public.decode(), None, "203.0.113.20", NOW) == "the CA is new"
    other = ca_for(tmp_path / "other", "203.0.113.20/32")
    issued_files(other, "203.0.113.20")
    assert renewal_reason(chain, public.decode(), other.current(NOW), "203.0.113.20", NOW) == (
        "not issued by the current CA"
    )
    assert renewal_reason(chain, public.decode(), current, "203.0.113.11", NOW) == "does not cover 203.0.113.11"
    later = NOW + datetime.timedelta(days=LEAF_DAYS - 29)
    assert (renewal_reason(chain, public.decode(), current, "203.0.113.20", later) or "").startswith("expires ")
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_public = stranger.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert renewal_reason(chain, other_public.decode(), current, "203.0.113.20", NOW) == (
        "the host's key does not match its certificate"
    )


def fresh_host() -> dict[str, Fact]:
    return {"chain": Fact("", 1), "key": Fact("", 1), "old_ca": Fact("", 2)}


def test_the_step_plans_without_touching_the_operator_ca_and_issues_when_streamed(example: Path) -> None:
    config = load_config(example, "staging")
    step = private_ca_certificate(config)
    assert isinstance(step, PrivateCaCertificate)
    note, stream, reload = step.plan(fresh_host())
    assert note == Note(f"a new private CA in {config.ca_path}")
    assert (
        isinstance(stream, Stream) and stream.why == f"issue a {LEAF_DAYS}-day certificate (no certificate on the host)"
    )
    assert isinstance(reload, Run) and "nginx -s reload" in reload.command
    assert not config.ca_path.exists()  # deciding (and check mode) makes no CA
    b"".join(stream.source.chunks())
    assert (config.ca_path / CA_KEY).is_file()


def test_a_host_with_an_old_ca_key_gets_it_deleted_once(example: Path) -> None:
    step = private_ca_certificate(load_config(example, "staging"))
    facts = {
        **fresh_host(),
        "old_ca": Fact("/opt/appliance/shared/certs/ca-key.pem\n/opt/appliance/shared/certs/ca.srl", 0),
    }
    (delete, *_) = step.plan(facts)
    assert delete == Run(
        "rm -f -- /opt/appliance/shared/certs/ca-key.pem /opt/appliance/shared/certs/ca.srl",
        "delete the CA key an older version kept on the host",
    )


def test_the_install_command_puts_each_file_in_place_with_its_mode(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "fullchain.pem").write_text("old")
    ca = ca_for(tmp_path / "ca", "203.0.113.20/32")
    archive = b"".join(IssuedFiles(ca, "203.0.113.20").chunks())
    run = subprocess.run(["bash", "-c", install_issued(str(certs))], input=archive, capture_output=True)
    assert run.returncode == 0, run.stderr
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in certs.iterdir()}
    assert modes == {"privkey.pem": 0o600, "fullchain.pem": 0o644, "ca.pem": 0o644}  # no staging folder left
    leaf = parse_bundle((certs / "fullchain.pem").read_bytes())[0]
    key = serialization.load_pem_private_key((certs / "privkey.pem").read_bytes(), None)
    assert leaf.public_key() == key.public_key()
