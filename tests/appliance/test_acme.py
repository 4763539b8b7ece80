"""tls.mode "acme": what bootstrap installs, when certbot is asked, and how its failure reads (through real bash)."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from appliance.bootstrap.acme import (
    AcmeCertificate,
    acme_left_behind,
    acme_steps,
    ca_bundle,
    one_line_failure,
    renewal_server,
)
from appliance.bootstrap.tls import PrivateCaCertificate, certificate_steps
from appliance.config import Config, load_config
from appliance.errors import ConfigError
from appliance.shell import sh
from appliance.steps import ConfigFiles, Converge, Fact, ManagedFile, Packages, Run

pytestmark = pytest.mark.unit

DIRECTORY = "https://172.17.0.1:14000/dir"
DOMAIN = "agents.example.com"


def acme_config(tmp_path: Path, ca_file: str | None = "pebble.pem", mode: str = "acme") -> Config:
    (tmp_path / "pebble.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    ca = f'acme_ca_file = "{ca_file}"\n' if ca_file else ""
    path = tmp_path / "appliance.toml"
    path.write_text(
        f'domain = "{DOMAIN}"\n[tls]\nmode = "{mode}"\nacme_email = "ops@example.com"\n'
        f'acme_directory = "{DIRECTORY}"\n{ca}'
        '[environments.production]\n[[environments.production.hosts]]\naddress = "203.0.113.10"\n'
    )
    return load_config(path)


RENEWAL = f"version = 2.1.0\narchive_dir = /etc/letsencrypt/archive/{DOMAIN}\n[renewalparams]\nserver = {DIRECTORY}\n"


def facts(renewal: str | None = RENEWAL, lasting: bool = True, served: bool = True) -> dict[str, Fact]:
    return {
        "renewal": Fact(renewal or "", 0 if renewal is not None else 1),
        "lasting": Fact("", 0 if lasting else 1),
        "served": Fact("", 0 if served else 1),
    }


def test_renewal_server_is_read_from_the_lineage_file() -> None:
    assert renewal_server(RENEWAL) == DIRECTORY
    assert renewal_server("[renewalparams]\nauthenticator = webroot\n") is None


def test_first_request_goes_through_the_webroot_to_the_configured_directory(tmp_path: Path) -> None:
    settings = acme_config(tmp_path).settings
    (action,) = AcmeCertificate(settings).plan(facts(renewal=None))
    assert isinstance(action, Run)
    assert action.why == f"request the first certificate from {DIRECTORY}"
    words = [
        "certonly --webroot --webroot-path /opt/appliance/shared/www",
        f"--cert-name {DOMAIN} --domains {DOMAIN}",
        f"--server {DIRECTORY}",
        "--email ops@example.com --agree-tos --no-eff-email --non-interactive --keep-until-expiring",
        "--deploy-hook /etc/letsencrypt/renewal-hooks/deploy/appliance.sh",
    ]
    assert all(word in action.command for word in words), action.command
    assert f"REQUESTS_CA_BUNDLE={ca_bundle(settings)} certbot" in action.command


def test_certbot_is_asked_only_when_the_facts_call_for_it(tmp_path: Path) -> None:
    settings = acme_config(tmp_path).settings
    assert AcmeCertificate(settings).plan(facts()) == []

    (due,) = AcmeCertificate(settings).plan(facts(lasting=False))
    assert isinstance(due, Run) and due.why.startswith("renew: it expires within 30 days")
    assert "--keep-until-expiring" in due.command

    (forced,) = AcmeCertificate(settings, force=True).plan(facts())
    assert isinstance(forced, Run) and "--force-renewal" in forced.command
    assert "--keep-until-expiring" not in forced.command

    staging = RENEWAL.replace(DIRECTORY, "https://acme-staging.example/dir")
    (moved,) = AcmeCertificate(settings).plan(facts(renewal=staging))
    assert isinstance(moved, Run) and "--force-renewal" in moved.command
    assert moved.why == f"it came from https://acme-staging.example/dir: request one from {DIRECTORY}"


def test_an_issued_certificate_nginx_does_not_serve_is_put_in_place_by_the_deploy_hook(tmp_path: Path) -> None:
    settings = acme_config(tmp_path).settings
    (install,) = AcmeCertificate(settings).plan(facts(served=False))
    assert isinstance(install, Run)
    assert install.command == (
        f"RENEWED_LINEAGE=/etc/letsencrypt/live/{DOMAIN} /etc/letsencrypt/renewal-hooks/deploy/appliance.sh"
    )
    assert "certbot" not in install.command


def test_without_a_ca_file_certbot_trusts_the_public_cas(tmp_path: Path) -> None:
    config = acme_config(tmp_path, ca_file=None)
    (action,) = AcmeCertificate(config.settings).plan(facts(renewal=None))
    assert isinstance(action, Run) and "REQUESTS_CA_BUNDLE" not in action.command
    steps = acme_steps(config)
    assert not any(isinstance(step, ManagedFile) and step.path.endswith("acme-ca.pem") for step in steps)
    removal = next(step for step in steps if isinstance(step, Converge) and "drop-in" in step.why)
    assert removal.check == "! test -e /etc/systemd/system/certbot.service.d/appliance.conf"


def test_bootstrap_installs_certbot_the_placeholder_the_hook_and_the_timers_trust(tmp_path: Path) -> None:
    config = acme_config(tmp_path)
    steps = acme_steps(config)
    assert isinstance(steps[0], Packages) and steps[0].packages == ("certbot",)
    placeholder = steps[1]
    assert isinstance(placeholder, Converge)
    # Only when there is no certificate: an issued one is never replaced by the placeholder.
    assert placeholder.check == (
        "test -s /opt/appliance/shared/certs/fullchain.pem && test -s /opt/appliance/shared/certs/privkey.pem"
    )
    assert f"-subj /CN={DOMAIN}" in placeholder.fix and "ca-key" not in placeholder.fix
    hook = next(step for step in steps if isinstance(step, ManagedFile) and "renewal-hooks" in step.path)
    assert hook.mode == 0o755
    text = hook.content.decode()
    assert '[ "${RENEWED_LINEAGE:-}" = "$live" ] || exit 0' in text and f"live=/etc/letsencrypt/live/{DOMAIN}" in text
    assert "nginx -s reload" in text and "cert-expiry.sh" in text
    bundle = next(step for step in steps if isinstance(step, ManagedFile) and step.path == ca_bundle(config.settings))
    assert bundle.content == b"-----BEGIN CERTIFICATE-----\n"
    (drop_in,) = next(step for step in steps if isinstance(step, ConfigFiles)).files
    assert drop_in.path == "/etc/systemd/system/certbot.service.d/appliance.conf"
    assert "Environment=REQUESTS_CA_BUNDLE=/opt/appliance/shared/acme-ca.pem\n" in drop_in.content.decode()


def test_a_missing_ca_file_is_one_line_naming_the_field(tmp_path: Path) -> None:
    config = acme_config(tmp_path, ca_file="missing.pem")
    with pytest.raises(ConfigError) as caught:
        acme_steps(config)
    assert str(caught.value) == (
        f"{config.path}: tls.acme_ca_file: {tmp_path / 'missing.pem'} not found: fix tls.acme_ca_file"
    )


def test_deploy_and_tls_renew_keep_every_mode_current(tmp_path: Path) -> None:
    """What deploy runs last and `inv tls.renew` applies: the mode's own certificate step, forceable."""
    acme_steps_, private = (
        certificate_steps(acme_config(tmp_path)),
        certificate_steps(acme_config(tmp_path, mode="self-signed"), force=True),
    )
    assert [type(step).__name__ for step in acme_steps_] == ["AcmeCertificate"]
    (step,) = private
    assert isinstance(step, PrivateCaCertificate) and step.force


def run_failing(output: str) -> subprocess.CompletedProcess[str]:
    """`one_line_failure` around a command that prints certbot's output as certbot 2.1 did and fails."""
    command = f"printf '%s\\n' {sh(textwrap.dedent(output))}; exit 1"
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {one_line_failure(command, DOMAIN)}"], capture_output=True, text=True
    )


def test_a_failed_challenge_is_one_line_with_the_servers_detail_and_what_to_check() -> None:
    run = run_failing(
        """\
        Saving debug log to /var/log/letsencrypt/letsencrypt.log
        Requesting a certificate for agents.example.com

        Certbot failed to authenticate some domains (authenticator: webroot). The Certificate Authority reported \
these problems:
          Domain: agents.example.com
          Type:   connection
          Detail: 127.0.0.2: Fetching http://agents.example.com:80/.well-known/acme-challenge/x: Connection refused

        Hint: The Certificate Authority failed to download the temporary challenge files created by Certbot.

        Some challenges have failed.
        Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile for more details.
        """
    )
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr == (
        "certbot: 127.0.0.2: Fetching http://agents.example.com:80/.well-known/acme-challenge/x: Connection refused; "
        "check that agents.example.com's DNS A record points at this host and port 80 is open (security group, ufw) "
        "(full log: /var/log/letsencrypt/letsencrypt.log)\n"
    )


def test_an_unexpected_error_gives_the_line_after_certbots_heading() -> None:
    run = run_failing(
        """\
        Saving debug log to /var/log/letsencrypt/letsencrypt.log
        An unexpected error occurred:
        Error creating new order :: too many certificates (5) already issued for this exact set of domains
        Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile for more details.
        """
    )
    assert run.returncode == 1
    assert run.stderr.startswith(
        "certbot: Error creating new order :: too many certificates (5) already issued for this exact set of domains; "
        "the ACME server's rate limit: wait"
    )
    assert run.stderr.count("\n") == 1


def test_a_succeeding_command_says_nothing() -> None:
    run = subprocess.run(["bash", "-c", one_line_failure("echo issued", DOMAIN)], capture_output=True, text=True)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


def test_leaving_acme_deletes_the_lineage_its_hook_names(tmp_path: Path) -> None:
    """Another mode's bootstrap removes certbot's lineage and hook; the lineage's name is read from the hook."""
    hook = next(s for s in acme_steps(acme_config(tmp_path)) if isinstance(s, ManagedFile) and s.path.endswith(".sh"))
    (tmp_path / "hook.sh").write_bytes(hook.content)
    step = acme_left_behind(acme_config(tmp_path, mode="self-signed").settings)
    assert step.check.startswith("! test -e /etc/letsencrypt/renewal-hooks/deploy/")
    named = step.fix.split('--cert-name "', 1)[1].split('"', 1)[0].replace(hook.path, str(tmp_path / "hook.sh"))
    assert subprocess.run(["bash", "-c", f"echo {named}"], capture_output=True, text=True).stdout.strip() == DOMAIN
