"""`inv host.drain` / `inv host.undrain` (docs/scaling.md, Step 3): one app host out of the load balancer and back.

Drained, the host's /api/health answers 503, so the CLB (haproxy in the tests) sends it no new requests, while what
is in flight, WebSockets included, goes on until the host stops. The mark is a file in the folder nginx reads
(`HostPaths.drain_flag`); the site's health locations answer 503 while it exists (nginx/appliance.conf.j2, rendered
so for several hosts). nginx looks for it on every request: no reload, and it outlives an API restart, a deploy and
a reboot. Each step reads the flag and the health answer first, so a second drain or undrain changes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

from appliance.config import Config, Host, Settings
from appliance.errors import ConfigError
from appliance.executor import Executor, StepResult
from appliance.lock import operator
from appliance.release_commands import SITE_HEALTH_URL
from appliance.remote import open_host
from appliance.render import DRAIN_STATUS, drain_flag_in_nginx
from appliance.secrets import load_secrets
from appliance.shell import sh
from appliance.steps import Action, Facts, Run

# What the operator reads after a drain: when the load balancer has stopped, and what to do next.
DRAINED_NOTE = (
    "{host}: drained: the load balancer sends it no new requests once its health check has failed (interval x "
    "unhealthy threshold); running discussions and WebSockets go on. Stop or update it, then inv host.undrain"
)
# nginx may take a moment to start after a reboot: the site is asked this many times, half a second apart.
HEALTH_ATTEMPTS = 10


def health_body(url: str = SITE_HEALTH_URL) -> str:
    """The site's /api/health answer as the host itself gets it through its nginx, whatever the status."""
    return sh("curl", "-sk", "--max-time", "5", url)


def site_answers(draining: bool, url: str = SITE_HEALTH_URL) -> str:
    """Succeeds once the site's health answer at `url` says draining (or, `draining` False, no longer says it)."""
    found, other = ("exit 0", ":") if draining else (":", "exit 0")
    return (
        f'(for i in $(seq {HEALTH_ATTEMPTS}); do case "$({health_body(url)})" in *\'"{DRAIN_STATUS}"\'*) {found};; '
        f"*) {other};; esac; sleep 0.5; done; exit 1)"
    )


def is_draining(fact_text: str) -> bool:
    """Whether a health answer is nginx's drained one."""
    return f'"{DRAIN_STATUS}"' in fact_text


@dataclass(frozen=True)
class Drain:
    """The flag in place (who and when inside) and the site's health answering 503 `draining`."""

    settings: Settings
    who: str
    since: float

    @property
    def name(self) -> str:
        return "drain: /api/health answers 503"

    def probes(self) -> Mapping[str, str]:
        return {"flag": sh("test", "-e", self.settings.paths.drain_flag), "health": health_body()}

    def plan(self, facts: Facts) -> list[Action]:
        if facts["flag"].ok and is_draining(facts["health"].stdout):
            return []
        flag = self.settings.paths.drain_flag
        record = json.dumps({"who": self.who, "since": self.since})
        mark = f"printf '%s\\n' {sh(record)} > {sh(flag + '.next')} && mv -f {sh(flag + '.next')} {sh(flag)}"
        # Without the check in its site (rendered for one host, or a deploy from before drain), nginx would go on
        # answering 200: the flag is taken back rather than left there pretending.
        unchecked = (
            f"{{ rm -f {sh(flag)}; echo 'nginx does not check the drain flag: deploy a release rendered for "
            "several [[hosts]] first (inv deploy)' >&2; exit 1; }"
        )
        return [Run(f"{mark} && {{ {site_answers(True)} || {unchecked}; }}", "mark the host drained")]


@dataclass(frozen=True)
class Undrain:
    """No flag, and the site's health no longer answering `draining`."""

    settings: Settings

    @property
    def name(self) -> str:
        return "undrain: /api/health answers again"

    def probes(self) -> Mapping[str, str]:
        return {"flag": sh("test", "-e", self.settings.paths.drain_flag)}

    def plan(self, facts: Facts) -> list[Action]:
        if not facts["flag"].ok:
            return []
        return [Run(f"rm -f {sh(self.settings.paths.drain_flag)} && {site_answers(False)}", "remove the drain flag")]


def pick_host(config: Config, wanted: str) -> Host:
    """The config's host that `wanted` names (its label, USER@LABEL or USER@ADDRESS:PORT: Host.answers_to); a one-line
    ConfigError otherwise, and with one host, which has nowhere to send its traffic."""
    hosts = config.settings.hosts
    if drain_flag_in_nginx(config.settings) is None:
        raise ConfigError(
            f"{config.path}: host.drain needs several [[hosts]] behind a load balancer: the only host would just fail "
            "its health check with no other to take the traffic"
        )
    matches = [host for host in hosts if host.answers_to(wanted)]
    if len(matches) != 1:
        known = ", ".join(host.label for host in hosts)
        raise ConfigError(f"{config.path}: {wanted!r} names none of the environment's hosts: one of {known}")
    return matches[0]


def set_drained(config: Config, wanted: str, drained: bool, check: bool = False) -> tuple[Host, list[StepResult]]:
    """Drain (or undrain) the host `wanted` names: the chosen host and its step's result."""
    host = pick_host(config, wanted)
    settings = config.settings
    step = Drain(settings, operator(), time.time()) if drained else Undrain(settings)
    secrets = load_secrets(config.secrets_path)
    with open_host(config.on_host(host)) as remote:
        return host, Executor(remote, check=check, redact=secrets.redact).apply_all([step])
