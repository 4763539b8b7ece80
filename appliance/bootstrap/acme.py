"""ACME certificates (tls.mode "acme"): certbot from the distribution, HTTP-01 through the running nginx's webroot.

Bootstrap installs certbot, a plain self-signed placeholder (so nginx can start before the first issuance), the
deploy hook that puts each issued certificate where nginx reads it, and the renewal timer's environment. Deploy
(after the switch, once nginx serves the challenge folder) and `inv tls.renew` apply `AcmeCertificate`, which
asks certbot only when the facts say a certificate is missing, due, from another directory, or forced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from appliance.bootstrap.tls import cert_expiry_command, certs_dir, reload_nginx
from appliance.certificates import RENEW_BEFORE
from appliance.config import Config, Settings
from appliance.errors import ConfigError
from appliance.render import render_host_template
from appliance.shell import sh
from appliance.steps import Action, ConfigFiles, Converge, Facts, ManagedFile, Packages, Run, Step

LETSENCRYPT = "/etc/letsencrypt"
PLACEHOLDER_DAYS = 90
LOG_FILE = "/var/log/letsencrypt/letsencrypt.log"

# What to check for each kind of problem the ACME server reports (certbot prints "Type: ..." per domain).
ADVICE = {
    "dns": "check that DOMAIN has a DNS A record for this host",
    "connection": "check that DOMAIN's DNS A record points at this host and port 80 is open (security group, ufw)",
    "unauthorized": (
        "check that http://DOMAIN/.well-known/acme-challenge/ reaches this host's nginx "
        "(a mainland-region host needs an ICP filing)"
    ),
    "rateLimited": "the ACME server's rate limit: wait before retrying, or test against a staging tls.acme_directory",
    "other": (
        "check DOMAIN's DNS A record, port 80 (security group, ufw), the ICP filing (mainland regions) "
        "and that tls.acme_directory is reachable from the host"
    ),
}

# Certbot's output is a screenful; the operator gets its reason on one line. The ACME server's "Detail:" when
# certbot printed one, else the line after "An unexpected error occurred:", else its last meaningful line.
REASON_AWK = r"""
/^ *Type: / { sub(/^ *Type: */, ""); type = $0 }
/^ *Detail: / { sub(/^ *Detail: */, ""); detail = $0 }
unexpected == "next" { unexpected = $0 }
/^An unexpected error occurred:/ { unexpected = "next" }
NF && !/^(Ask for help|See the logfile|Saving debug log|Some challenges have failed|Hint: )/ { last = $0 }
END {
  reason = detail != "" ? detail : (unexpected != "" && unexpected != "next") ? unexpected : last
  advice = advice_other
  if (type == "dns") advice = advice_dns
  else if (type == "connection") advice = advice_connection
  else if (type == "unauthorized" || type == "incorrectResponse") advice = advice_unauthorized
  if (type == "rateLimited" || reason ~ /rateLimited|too many (certificates|failed authorizations|new orders)/)
    advice = advice_rateLimited
  gsub(/[ \t]+/, " ", reason)
  printf "certbot: %s; %s (%s)\n", reason, advice, logfile
}
"""


def live_dir(settings: Settings) -> str:
    """certbot's lineage for the site's domain (named by --cert-name, so it never becomes DOMAIN-0001)."""
    return f"{LETSENCRYPT}/live/{settings.domain}"


def renewal_file(settings: Settings) -> str:
    return f"{LETSENCRYPT}/renewal/{settings.domain}.conf"


def deploy_hook(settings: Settings) -> str:
    """Run by certbot after each issuance (--deploy-hook) and renewal (the renewal-hooks folder), once."""
    return f"{LETSENCRYPT}/renewal-hooks/deploy/{settings.name}.sh"


def ca_bundle(settings: Settings) -> str:
    """The CA bundle certbot trusts the ACME server with, when tls.acme_ca_file names one."""
    return settings.paths.acme_ca


def timer_drop_in(settings: Settings) -> str:
    return f"/etc/systemd/system/certbot.service.d/{settings.name}.conf"


def one_line_failure(command: str, domain: str) -> str:
    """`command`, silent when it succeeds; when it fails, certbot's reason and what to check, on one line."""
    advice = [
        word for kind, text in ADVICE.items() for word in ("-v", f"advice_{kind}={text.replace('DOMAIN', domain)}")
    ]
    summary = sh("awk", *advice, "-v", f"logfile=full log: {LOG_FILE}", REASON_AWK)
    return f"{{ out=$( {command} 2>&1 ) || {{ printf '%s\\n' \"$out\" | {summary} >&2; exit 1; }}; }}"


def certbot_command(settings: Settings, *words: str) -> str:
    """certbot, trusting tls.acme_ca_file's bundle when there is one (the renewal timer gets it via a drop-in)."""
    trust = f"REQUESTS_CA_BUNDLE={sh(ca_bundle(settings))} " if settings.tls.acme_ca_file else ""
    return trust + sh("certbot", *words)


def certonly(settings: Settings, force: bool) -> str:
    """Request (or renew) the domain's certificate through nginx's webroot; certbot records these options for
    its timer's renewals, deploy hook included."""
    tls = settings.tls
    words = [
        "certonly",
        "--webroot",
        "--webroot-path",
        settings.paths.www,
        "--cert-name",
        settings.domain,
        "--domains",
        settings.domain,
        "--server",
        tls.acme_directory,
        "--email",
        tls.acme_email or "",
        "--agree-tos",
        "--no-eff-email",
        "--non-interactive",
        "--force-renewal" if force else "--keep-until-expiring",
        "--deploy-hook",
        deploy_hook(settings),
    ]
    return one_line_failure(certbot_command(settings, *words), settings.domain)


def renewal_server(renewal_conf: str) -> str | None:
    """The directory URL a lineage's renewal file names (`server = URL`), None when it names none."""
    for line in renewal_conf.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "server":
            return value.strip()
    return None


@dataclass(frozen=True)
class AcmeCertificate:
    """The site's certificate from tls.acme_directory, issued for tls.domain and served by nginx.

    Asks certbot only when the facts call for it: no certificate yet, one from another directory, one that
    expires within 30 days, or `force`. An issued certificate that nginx does not serve yet is put in place by
    the deploy hook. Example: `Executor(host).apply(AcmeCertificate(settings))`."""

    settings: Settings
    force: bool = False

    @property
    def name(self) -> str:
        return f"TLS certificate {self.settings.domain} (ACME)"

    def probes(self) -> Mapping[str, str]:
        live, certs = live_dir(self.settings), certs_dir(self.settings)
        return {
            "renewal": sh("cat", renewal_file(self.settings)),
            "lasting": sh(
                "openssl", "x509", "-checkend", int(RENEW_BEFORE.total_seconds()), "-noout", "-in", f"{live}/cert.pem"
            ),
            "served": " && ".join(
                sh("cmp", "-s", f"{live}/{name}", f"{certs}/{name}") for name in ("fullchain.pem", "privkey.pem")
            ),
        }

    def plan(self, facts: Facts) -> list[Action]:
        directory = self.settings.tls.acme_directory
        server = renewal_server(facts["renewal"].stdout) if facts["renewal"].ok else None
        if server is None:
            return [Run(certonly(self.settings, force=False), f"request the first certificate from {directory}")]
        if server != directory:
            return [Run(certonly(self.settings, force=True), f"it came from {server}: request one from {directory}")]
        if self.force:
            return [Run(certonly(self.settings, force=True), f"forced renewal from {directory}")]
        if not facts["lasting"].ok:
            return [Run(certonly(self.settings, force=False), f"renew: it expires within 30 days ({directory})")]
        if not facts["served"].ok:
            install = f"RENEWED_LINEAGE={sh(live_dir(self.settings))} {sh(deploy_hook(self.settings))}"
            return [Run(install, "put the issued certificate where nginx reads it")]
        return []


def placeholder_certificate(settings: Settings) -> Converge:
    """A plain self-signed certificate, only while there is none: nginx needs one to start before the first
    issuance, and it must not come from the appliance's private CA."""
    certs = certs_dir(settings)
    key, cert = f"{certs}/privkey.pem", f"{certs}/fullchain.pem"
    make = sh(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-days", PLACEHOLDER_DAYS, "-subj", f"/CN={settings.domain}",
        "-addext", f"subjectAltName=DNS:{settings.domain}",
        "-keyout", f"{key}.next", "-out", f"{cert}.next",
    )  # fmt: skip
    place = f"chmod 600 {sh(key + '.next')} && mv {sh(key + '.next')} {sh(key)} && mv {sh(cert + '.next')} {sh(cert)}"
    return Converge(
        "TLS placeholder certificate (until the ACME one)",
        check=f"test -s {sh(cert)} && test -s {sh(key)}",
        fix=f"{make} 2>/dev/null && {place} && {cert_expiry_command(settings)}",
        why=f"a self-signed certificate for {settings.domain}, replaced by the first ACME issuance",
    )


def acme_steps(config: Config) -> list[Step]:
    """Bootstrap's part: certbot, the placeholder, the deploy hook, and the renewal timer with its CA trust."""
    settings = config.settings
    hook = render_host_template(
        "certbot-deploy-hook.sh.j2",
        live_dir=live_dir(settings),
        certs_dir=certs_dir(settings),
        cert_expiry=cert_expiry_command(settings),
        reload=reload_nginx(settings),
    )
    steps: list[Step] = [
        Packages("certbot", ("certbot",)),
        placeholder_certificate(settings),
        ManagedFile(deploy_hook(settings), hook, 0o755),
    ]
    drop_in = timer_drop_in(settings)
    if settings.tls.acme_ca_file:
        path = config.resolve(settings.tls.acme_ca_file)
        if not path.is_file():
            raise ConfigError(f"{config.path}: tls.acme_ca_file: {path} not found: fix tls.acme_ca_file")
        environment = render_host_template("certbot-service.conf.j2", ca_bundle=ca_bundle(settings))
        steps += [
            ManagedFile(ca_bundle(settings), path.read_bytes(), 0o644),
            ConfigFiles("certbot timer's CA trust", (ManagedFile(drop_in, environment),), "systemctl daemon-reload",
                        "reload systemd"),
        ]  # fmt: skip
    else:
        steps.append(
            Converge(
                "certbot timer trusts the public CAs",
                f"! test -e {sh(drop_in)}",
                f"rm -f {sh(drop_in)} && systemctl daemon-reload",
                "remove the private ACME CA's drop-in",
            )
        )
    steps.append(
        Converge(
            "certbot.timer on",
            "systemctl is-enabled --quiet certbot.timer && systemctl is-active --quiet certbot.timer",
            "systemctl enable --now certbot.timer",
            "renew twice a day (certbot renew, then the deploy hook)",
        )
    )
    return steps


def acme_left_behind(settings: Settings) -> Converge:
    """Leaving tls.mode "acme": certbot's timer must no longer renew the lineage, nor its deploy hook copy it
    over the new mode's certificate. The hook names the lineage (its `live=` line)."""
    hook, drop_in = deploy_hook(settings), timer_drop_in(settings)
    lineage = f"$(sed -n 's|^live=.*/||p' {sh(hook)})"
    delete = f'(command -v certbot >/dev/null && certbot delete --non-interactive --cert-name "{lineage}" || true)'
    return Converge(
        "no ACME certificate left renewing",
        f"! test -e {sh(hook)}",
        f"{delete} && rm -f {sh(hook)} {sh(drop_in)} && systemctl daemon-reload",
        "tls.mode is no longer acme: delete certbot's lineage and the deploy hook",
    )
