"""`inv deploy` and `inv rollback` on several app hosts: every host planned over its own session and its lock taken
first, then the canary (the first host, where migrations run) and the others `deploy.batch` at a time
(appliance/rollout.py schedules; appliance/deploy.py plans each host)."""

from __future__ import annotations

import contextlib
import functools

from appliance import frontend, rollout
from appliance.config import Config
from appliance.deploy import deploy_secrets, plan_deploy, plan_rollback
from appliance.executor import OnProgress
from appliance.host_release import HostRelease, check_results
from appliance.remote import open_host
from appliance.rollout import HostOutcome, failed_outcome
from appliance.secrets import load_secrets


def deploy_hosts(
    config: Config,
    image: str,
    version: str,
    *,
    check: bool = False,
    wait: bool = False,
    progress: OnProgress | None = None,
) -> list[HostOutcome]:
    """Release `version` on every app host: every host read and its lock taken first, then the canary (the first
    host, where migrations run) deployed and gated, then the others `deploy.batch` at a time (appliance/rollout.py).
    A failure stops the roll; the hosts not started keep their release. check mode: each host's plan, no lock."""
    front = frontend.shipped(config)
    secrets = deploy_secrets(config)
    hosts = config.app_hosts()
    canary = hosts[0].settings.hosts[0].label
    with contextlib.ExitStack() as opened:
        changes = []
        for index, host_config in enumerate(hosts):
            label = host_config.settings.hosts[0].label
            remote = opened.enter_context(open_host(host_config))
            labelled = _labelled_progress(progress, label) if progress else None
            changes.append(
                plan_deploy(
                    host_config, remote, secrets, image, version, check, labelled, front, canary if index else ""
                )
            )
        return _roll(changes, check, config.settings.deploy.batch, wait)


def rollback_hosts(
    config: Config, to: str | None = None, *, check: bool = False, wait: bool = False
) -> list[HostOutcome]:
    """Every app host back to release `to` (default: the one before the canary's current), canary first, one at a
    time, through the same gate; a host that already serves it is left as it is."""
    secrets = load_secrets(config.secrets_path)
    hosts = config.app_hosts()
    with contextlib.ExitStack() as opened:
        remotes = [opened.enter_context(open_host(host_config)) for host_config in hosts]
        canary = plan_rollback(hosts[0], remotes[0], secrets, to, check)
        version = canary.release.version
        changes = [canary] + [
            plan_rollback(host_config, remote, secrets, version, check, follower=True)
            for host_config, remote in zip(hosts[1:], remotes[1:], strict=True)
        ]
        return _roll(changes, check, 1, wait)


def _roll(changes: list[HostRelease], check: bool, batch: int, wait: bool) -> list[HostOutcome]:
    """Several hosts' changes rolled (rollout.roll); check mode: each host's plan at once, nothing locked."""
    if check:
        return rollout.fan_out([(change.host, functools.partial(_checked, change)) for change in changes])
    return rollout.roll(changes, batch, wait)


def _checked(change: HostRelease) -> HostOutcome:
    return failed_outcome(change.host, check_results(change))


def _labelled_progress(progress: OnProgress, host: str) -> OnProgress:
    """A transfer's progress with the host before each item's name, so two hosts' bars stay apart."""

    def update(name: str, done: int, total: int) -> None:
        progress(f"{host}: {name}", done, total)

    return update
