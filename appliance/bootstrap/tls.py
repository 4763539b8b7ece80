"""The site's certificate: the appliance's own CA (IP-only hosts), provided files, or ACME."""

from __future__ import annotations

import ipaddress

from appliance.config import Config, Settings
from appliance.errors import ConfigError
from appliance.render import render_template
from appliance.shell import sh
from appliance.steps import ConfigFiles, Converge, ManagedFile, Packages, Step

CERT_DAYS = 397  # browsers' limit for a server certificate's lifetime


def reload_nginx(settings: Settings) -> str:
    """Reload the running stack's nginx, if a release is running; nothing otherwise."""
    current = f"{settings.base_dir}/current"
    compose = f"{settings.base_dir}/bin/compose --project-name {sh(settings.name)}"
    return (
        f"if [ -e {sh(current)}/docker-compose.yml ]; then "
        f"cd {sh(current)} && {compose} exec -T nginx nginx -s reload || true; fi"
    )


def _subject_alt_name(name: str) -> str:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return f"DNS:{name}"
    return f"IP:{name}"


def certs_dir(settings: Settings) -> str:
    return f"{settings.base_dir}/shared/certs"


def cert_expiry_command(settings: Settings) -> str:
    """Refresh the TLS expiry metric (also run every 6 hours by cron)."""
    return sh(
        f"{settings.base_dir}/bin/cert-expiry.sh",
        f"{certs_dir(settings)}/fullchain.pem",
        f"{settings.base_dir}/shared/metrics/tls.prom",
    )


def self_signed_certificate(settings: Settings, common_name: str) -> Converge:
    """A certificate from a private CA, valid for the host's name, renewed 30 days before it lapses."""
    certs = certs_dir(settings)
    san = _subject_alt_name(common_name)
    shown = san.replace("IP:", "IP Address:")
    script = render_template(
        "systemd/host/selfsigned-cert.sh.j2",
        {
            "header": "written by inv bootstrap",
            "certs_dir": certs,
            "name": settings.name,
            "common_name": common_name,
            "subject_alt_names": san,
            "days": CERT_DAYS,
        },
    )
    return Converge(
        f"TLS certificate for {common_name}",
        check=(
            f"openssl x509 -checkend 2592000 -noout -in {certs}/fullchain.pem && test -s {certs}/privkey.pem "
            f"&& openssl x509 -noout -ext subjectAltName -in {certs}/fullchain.pem | grep -F {sh(shown)} >/dev/null"
        ),
        fix=f"bash -c {sh(script)} && {cert_expiry_command(settings)} && {reload_nginx(settings)}",
        why=f"issue a {CERT_DAYS}-day certificate from the appliance's own CA",
    )


def provided_certificate(config: Config) -> ConfigFiles:
    settings = config.settings
    certs = certs_dir(settings)
    files = []
    for local, remote, mode in (
        (settings.tls.cert_file, "fullchain.pem", 0o644),
        (settings.tls.key_file, "privkey.pem", 0o600),
    ):
        path = config.resolve(local or "")
        if not path.is_file():
            raise ConfigError(f"{config.path}: tls: {path} not found: fix tls.cert_file / tls.key_file")
        files.append(ManagedFile(f"{certs}/{remote}", path.read_bytes(), mode))
    return ConfigFiles(
        "TLS certificate (provided)",
        tuple(files),
        f"{cert_expiry_command(settings)} && {reload_nginx(settings)}",
        "reload nginx",
    )


def tls_steps(config: Config) -> list[Step]:
    settings = config.settings
    name = settings.domain or settings.hosts[0].address
    if settings.tls.mode == "provided":
        return [provided_certificate(config)]
    steps: list[Step] = [self_signed_certificate(settings, name)]
    if settings.tls.mode == "acme":
        # Certbot comes now; the first certificate is requested by deploy, once nginx serves the
        # webroot. Until then the self-signed one keeps nginx able to start.
        steps.insert(0, Packages("certbot", ("certbot",)))
    return steps
