"""The site's certificate: the appliance's own CA (IP-only hosts), provided files, or ACME."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509

from appliance.certificates import CertificateProblem, check_provided
from appliance.config import Config, Settings
from appliance.errors import ConfigError
from appliance.executor import Executor, StepResult
from appliance.private_ca import LEAF_DAYS, IssuedFiles, OperatorCa, issued_file_names, operator_ca, renewal_reason
from appliance.releases import compose_in
from appliance.remote import open_host
from appliance.secrets import load_secrets
from appliance.shell import sh
from appliance.steps import Action, ConfigFiles, Facts, ManagedFile, Note, Run, Step, Stream

OLD_CA_FILES = ("ca-key.pem", "ca.srl")  # where an older version kept its CA, on the host


def reload_nginx(settings: Settings) -> str:
    """Reload the running stack's nginx, if a release is running; nothing otherwise."""
    current = settings.paths.current
    reload = compose_in(settings, current, settings.name, "exec", "-T", "nginx", "nginx", "-s", "reload")
    return f"if [ -e {sh(current)}/docker-compose.yml ]; then {reload} || true; fi"


def site_name(settings: Settings) -> str:
    """The name the site's certificate must cover: the domain, else the (first) host's address."""
    return settings.domain or settings.hosts[0].address


def certs_dir(settings: Settings) -> str:
    return settings.paths.certs


def cert_expiry_command(settings: Settings) -> str:
    """Refresh the TLS expiry metric (also run every 6 hours by cron)."""
    return sh(
        settings.paths.script("cert-expiry.sh"),
        f"{certs_dir(settings)}/fullchain.pem",
        f"{settings.paths.metrics}/tls.prom",
    )


def install_issued(certs: str) -> str:
    """Unpack `IssuedFiles`' archive from stdin beside the served files, then rename each into place."""
    staged = " ".join(f'"$tmp"/{sh(name)}' for name in issued_file_names())
    return (
        f"( set -e; tmp=$(mktemp -d {sh(certs + '/.issued.XXXXXX')}); trap 'rm -rf \"$tmp\"' EXIT; "
        f'tar -x -f - -C "$tmp" --no-same-owner --same-permissions; mv -f {staged} {sh(certs)}/ )'
    )


@dataclass(frozen=True)
class PrivateCaCertificate:
    """The host's certificate from the private CA on the operator's machine, issued only when the facts call for it.

    Due when the host has none, or it is not from the current CA, does not cover `subject`, expires within 30
    days, or its key does not match it; otherwise `ok` and nothing is sent. A CA key an older version kept on
    the host is deleted. Example: `Executor(host).apply(private_ca_certificate(config))`."""

    settings: Settings
    subject: str
    ca: OperatorCa
    ca_certificate: x509.Certificate | None  # the CA as it is now; None when issuing makes a new one
    new_ca_note: str | None
    force: bool = False

    @property
    def name(self) -> str:
        return f"TLS certificate for {self.subject} (private CA)"

    def probes(self) -> Mapping[str, str]:
        certs = certs_dir(self.settings)
        return {
            "chain": sh("cat", f"{certs}/fullchain.pem"),
            "key": sh("openssl", "pkey", "-pubout", "-in", f"{certs}/privkey.pem"),
            "old_ca": sh("ls", "-1d", "--", *(f"{certs}/{name}" for name in OLD_CA_FILES)),
        }

    def plan(self, facts: Facts) -> list[Action]:
        actions: list[Action] = []
        left_over = facts["old_ca"].stdout.split()
        if left_over:
            actions.append(Run(sh("rm", "-f", "--", *left_over), "delete the CA key an older version kept on the host"))
        reason = (
            "renewal forced"
            if self.force
            else renewal_reason(
                facts["chain"].stdout if facts["chain"].ok else None,
                facts["key"].stdout if facts["key"].ok else None,
                self.ca_certificate,
                self.subject,
                datetime.datetime.now(datetime.timezone.utc),
            )
        )
        if reason is None:
            return actions
        if self.new_ca_note:
            actions.append(Note(self.new_ca_note))
        issued = IssuedFiles(self.ca, self.subject)
        why = f"issue a {LEAF_DAYS}-day certificate ({reason})"
        return [
            *actions,
            Stream(install_issued(certs_dir(self.settings)), issued, why),
            Run(f"{cert_expiry_command(self.settings)} && {reload_nginx(self.settings)}", "reload nginx"),
        ]


def private_ca_certificate(config: Config, force: bool = False) -> PrivateCaCertificate:
    settings, ca = config.settings, operator_ca(config)
    now = datetime.datetime.now(datetime.timezone.utc)
    return PrivateCaCertificate(settings, site_name(settings), ca, ca.current(now), ca.why_new(now), force)


@dataclass(frozen=True)
class ProvidedCertificate(ConfigFiles):
    """The provided bundle and key as nginx needs them; a warning worth repeating shows on every run."""

    warning: str | None = None

    def plan(self, facts: Facts) -> list[Action]:
        return [*super().plan(facts), *([Note(f"warning: {self.warning}")] if self.warning else [])]


def provided_certificate(config: Config) -> ProvidedCertificate:
    """Checked before any host is touched: a key that does not match, an expired certificate or one that does
    not cover the site's name is refused in one line."""
    settings = config.settings
    certs = certs_dir(settings)
    try:
        provided = check_provided(
            config.resolve(settings.tls.cert_file or ""),
            config.resolve(settings.tls.key_file or ""),
            site_name(settings),
            datetime.datetime.now(datetime.timezone.utc),
        )
    except CertificateProblem as exc:
        raise ConfigError(f"{config.path}: {exc}") from None
    return ProvidedCertificate(
        "TLS certificate (provided)",
        (
            ManagedFile(f"{certs}/fullchain.pem", provided.fullchain, 0o644),
            ManagedFile(f"{certs}/privkey.pem", provided.key, 0o600),
        ),
        f"{cert_expiry_command(settings)} && {reload_nginx(settings)}",
        "reload nginx",
        provided.warning,
    )


def tls_steps(config: Config) -> list[Step]:
    # acme.py builds on this module's helpers, hence the import here.
    from appliance.bootstrap.acme import acme_left_behind, acme_steps

    settings = config.settings
    if settings.tls.mode == "acme":
        # The first certificate is requested by deploy, once nginx serves the webroot; until then a
        # placeholder keeps nginx able to start.
        return acme_steps(config)
    certificate = provided_certificate(config) if settings.tls.mode == "provided" else private_ca_certificate(config)
    return [acme_left_behind(settings), certificate]


def certificate_steps(config: Config, force: bool = False) -> list[Step]:
    """The site's certificate kept current, at the end of every deploy and by `inv tls.renew`: ACME's first
    issuance or renewal (nginx serves the challenge folder by then), the private CA's certificate issued again
    when due (its key lives where these run), the provided files as they are now. Each is `ok` when nothing is
    due; `force` renews now (a provided certificate is what its files are)."""
    if config.settings.tls.mode == "acme":
        from appliance.bootstrap.acme import AcmeCertificate

        return [AcmeCertificate(config.settings, force)]
    if config.settings.tls.mode == "provided":
        return [provided_certificate(config)]
    return [private_ca_certificate(config, force)]


def renew(config: Config, force: bool = False, check: bool = False) -> list[StepResult]:
    """`inv tls.renew`: the certificate steps on the config's host."""
    secrets = load_secrets(config.secrets_path)
    with open_host(config) as remote:
        return Executor(remote, check=check, redact=secrets.redact).apply_all(certificate_steps(config, force))
