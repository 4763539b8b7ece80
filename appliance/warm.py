"""The warm window (`deploy.keep_warm_minutes`): after a switch the previous release's API stays up in standby,
taking no traffic and running no discussions, so that a rollback to it is an nginx switch instead of a cold start.

The host's side has one home here: the standby flag in the release's folder (`control/standby`, which the API
reads as its STANDBY_FILE, service/standby.py) and the transient systemd timer that ends the window under the
deploy lock. Everything returns commands or decides from probes; deploy's steps run them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from appliance.lock import acquire_lock, release_lock
from appliance.release_commands import drain, health_gate
from appliance.releases import Release
from appliance.shell import sh
from appliance.steps import Action, Facts, Run

CONTROL = "control"  # the release folder's subfolder mounted read-only at /run/cvm-service/control (api.yml.j2)
LOCK_POLL_SECONDS = 2
# What the host keeps free beyond the new API's growth: the OS, nginx and the page cache need room too.
RESERVE_MB = 256
RESERVE_SHARE = 0.10


def standby_flag(release: Release) -> str:
    return f"{release.directory}/{CONTROL}/standby"


def warm_unit(release: Release) -> str:
    """The transient systemd unit (timer and service) that ends the release's warm window."""
    return _unit(release.settings.name, release.slug)


def _unit(name: str, slug: str) -> str:
    return f"{name}-warm-{slug}"


def wake(release: Release) -> str:
    """The release's API out of standby (its workers notice within service.standby.POLL_SECONDS), its window's
    timer gone. Safe when neither exists."""
    unit = warm_unit(release)
    stop = f"{{ systemctl stop {sh(unit + '.timer', unit + '.service')} 2>/dev/null || true; }}"
    return f"{stop} && rm -f {sh(standby_flag(release))}"


def end_window(release: Release, now: float | None = None) -> str:
    """The timer's job: under the deploy lock (waited for), stop the API unless a rollback made it current again."""
    settings = release.settings
    current = settings.paths.current
    minutes = settings.deploy.keep_warm_minutes
    since = (now or time.time()) + minutes * 60
    holder = {"who": "systemd", "command": "warm window end", "version": release.version, "since": since}
    return (
        f"until {{ {acquire_lock(settings, holder)}; }} 2>/dev/null; do sleep {LOCK_POLL_SECONDS}; done; "
        f"trap {sh(release_lock(settings))} EXIT; "
        f'if [ "$(readlink {sh(current)})" != {sh(release.directory)} ]; then {drain(release)}; fi; status=$?; '
        # Started by hand (or by a second timer), the window is over all the same.
        f"systemctl stop {sh(warm_unit(release) + '.timer')} 2>/dev/null; exit $status"
    )


def keep_warm(release: Release) -> str:
    """The release's API into standby, and a timer that ends its window after `deploy.keep_warm_minutes`."""
    unit = warm_unit(release)
    timer = sh(
        "systemd-run", "--quiet", "--collect", "--property=Type=oneshot", f"--unit={unit}",
        f"--on-active={release.settings.deploy.keep_warm_minutes}min",
        "--timer-property=AccuracySec=1s", "--timer-property=RemainAfterElapse=no",
        "/bin/bash", "-c", end_window(release),
    )  # fmt: skip
    flag = standby_flag(release)
    return f"{wake(release)} && install -d -m 755 {sh(flag.rsplit('/', 1)[0])} && touch {sh(flag)} && {timer}"


@dataclass(frozen=True)
class ApiUp:
    """The release's API ready for traffic. Warm (a rollback to an API in standby): woken, one healthy answer.
    Otherwise started (its standby flag removed first) and through the health gate."""

    release: Release
    allow_warm: bool

    @property
    def name(self) -> str:
        return f"API {self.release.version} up"

    def probes(self) -> Mapping[str, str]:
        if not self.allow_warm:
            return {}
        running = self.release.container("api", api=True)
        return {"warm": f'[ -n "{running}" ] && [ -e {sh(standby_flag(self.release))} ] && echo warm'}

    def plan(self, facts: Facts) -> list[Action]:
        if self.allow_warm and facts["warm"].stdout.strip() == "warm":
            return [Run(f"{wake(self.release)} && {health_gate(self.release, 1)}", "warm: out of standby, healthy")]
        checks = self.release.settings.deploy.health_checks
        control = sh(f"{self.release.directory}/{CONTROL}")
        start = f"{wake(self.release)} && install -d -m 755 {control} && {self.release.compose('up', '-d', api=True)}"
        return [
            Run(start, "start the API"),
            Run(health_gate(self.release, checks), f"health gate: {checks} healthy answers in a row"),
        ]


def memory_shortfall(available_mb: int, warm_api_mb: int, total_mb: int) -> str | None:
    """Why a warm API does not fit, or None when it does. The new API grows to about what the old one uses now;
    that growth must come out of what is free and still leave a reserve, or the host would swap."""
    reserve = max(RESERVE_MB, int(total_mb * RESERVE_SHARE))
    if available_mb - warm_api_mb >= reserve:
        return None
    return (
        f"{available_mb} MB available, the warm API uses {warm_api_mb} MB and {reserve} MB must stay free: "
        "not enough memory to keep it warm"
    )


@dataclass(frozen=True)
class KeepWarm:
    """The previous release's API after a switch: kept warm in standby when the window is on and memory allows
    (one line says why not otherwise), else drained as before. Any other release's API still running is stopped."""

    previous: Release
    current: Release

    @property
    def name(self) -> str:
        return f"previous API {self.previous.version}"

    def probes(self) -> Mapping[str, str]:
        container = self.previous.container("api", api=True)
        pid = f"$(c={container}; [ -n \"$c\" ] && docker inspect -f '{{{{.State.Pid}}}}' $c)"
        project = '{{.Label "com.docker.compose.project"}} {{.ID}}'
        total = "awk '{s += $1} END {print s + 0}'"
        return {
            "available_kb": "awk '/^MemAvailable:/ {print $2}' /proc/meminfo",
            "total_kb": "awk '/^MemTotal:/ {print $2}' /proc/meminfo",
            # The API's processes (gunicorn's master and its workers): shared pages counted twice, so on the safe side.
            # No container, no pid: 0 (`ps --ppid 0` would count the host's init).
            "warm_kb": f'pid={pid}; [ "${{pid:-0}}" != 0 ] || {{ echo 0; exit 0; }}; '
            f"ps -o rss= --pid $pid --ppid $pid | {total}",
            "apis": f"docker ps --filter label=com.docker.compose.service=api --format {sh(project)}",
        }

    def plan(self, facts: Facts) -> list[Action]:
        ours = {release.project(api=True) for release in (self.previous, self.current)}
        prefix = f"{self.current.settings.name}-api-"
        stale = dict(
            line.split()
            for line in facts["apis"].stdout.splitlines()
            if len(line.split()) == 2 and line.startswith(prefix) and line.split()[0] not in ours
        )
        actions: list[Action] = []
        if stale:
            # Earlier releases' warm APIs: in standby already, so nothing of theirs needs a grace period; their
            # windows' timers go with them.
            ids = sh(*stale.values())
            name = self.current.settings.name
            timers = sh(*(_unit(name, project.removeprefix(prefix)) + ".timer" for project in stale))
            stop = f"docker stop -t 10 {ids} >/dev/null && docker rm {ids} >/dev/null"
            actions.append(
                Run(f"{stop} && {{ systemctl stop {timers} 2>/dev/null || true; }}", "stop earlier warm APIs")
            )
        minutes = self.previous.settings.deploy.keep_warm_minutes
        warm_mb = int(facts["warm_kb"].stdout.strip() or 0) // 1024
        if warm_mb == 0:
            return actions  # its API is not running: nothing to keep or drain
        if minutes == 0:
            return [*actions, Run(drain(self.previous), "keep_warm_minutes = 0: drain and stop it")]
        available = int(facts["available_kb"].stdout.strip() or 0) // 1024
        short = memory_shortfall(available, warm_mb, int(facts["total_kb"].stdout.strip() or 0) // 1024)
        if short is not None:
            return [*actions, Run(drain(self.previous), f"{short}: drain and stop it")]
        why = f"standby for {minutes} min, then stopped by the {warm_unit(self.previous)} timer"
        return [*actions, Run(keep_warm(self.previous), why)]
