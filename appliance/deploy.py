"""`inv deploy`: a release onto a bootstrapped host; traffic moves only to an API that passed its health gate.

Order: lock → images → release files → validate → databases up → migrations → new API up → health gate →
nginx switched by a graceful reload → `current` moved → previous API drained and stopped → unlock.
If the new API never gets healthy, nginx was never pointed at it: the previous release keeps serving,
the new API is stopped, and its last log lines and health answer are printed.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import docker

from appliance.config import Config, Settings
from appliance.errors import ConfigError, StepFailed
from appliance.executor import Executor, StepResult
from appliance.facts import gather_facts
from appliance.images import images_on_host, local_image
from appliance.remote import RemoteHost, open_host
from appliance.render import api_image, release_files, release_slug
from appliance.secrets import ensure_generated, load_secrets
from appliance.shell import sh
from appliance.steps import Action, Facts, ManagedFile, Run, Step

HEALTHY_IN_A_ROW = 3


@dataclass(frozen=True)
class Always:
    """A phase of a procedure: a command that runs every time (check mode only shows it)."""

    name: str
    command: str
    why: str

    def probes(self) -> Mapping[str, str]:
        return {}

    def plan(self, facts: Facts) -> list[Action]:
        return [Run(self.command, self.why)]


@dataclass(frozen=True)
class Release:
    """Where a release lives on the host and how its Compose projects are named."""

    settings: Settings
    version: str

    @property
    def slug(self) -> str:
        return release_slug(self.version)

    @property
    def directory(self) -> str:
        return f"{self.settings.base_dir}/releases/{self.version}"

    def compose(self, *words: str, api: bool = False) -> str:
        """A Compose command in this release's folder, for the infrastructure or (api=True) its API."""
        name = self.settings.name
        project, file = (f"{name}-api-{self.slug}", "api.yml") if api else (name, "docker-compose.yml")
        binary = f"{self.settings.base_dir}/bin/compose"
        return f"cd {sh(self.directory)} && {sh(binary, '--project-name', project, '--file', file, *words)}"


def lock_dir(settings: Settings) -> str:
    return f"{settings.base_dir}/shared/deploy.lock"


def acquire_lock(settings: Settings, holder: Mapping[str, object]) -> str:
    """mkdir is atomic: the first deploy gets the folder, any other sees who holds it."""
    folder = lock_dir(settings)
    return f"mkdir {sh(folder)} && printf '%s\\n' {sh(json.dumps(holder))} > {sh(folder + '/holder.json')}"


def lock_holder_message(holder_text: str, now: float) -> str:
    """One line naming who holds the deploy lock, for what, and for how long."""
    try:
        holder = json.loads(holder_text)
        age = int(now - float(holder["since"]))
        return f"deploy lock held by {holder['who']} ({holder['command']} {holder['version']}) for {age}s"
    except (ValueError, KeyError, TypeError):
        return "deploy lock held (holder unreadable): if no deploy runs, break it with `inv lock.break`"


def health_gate(release: Release) -> str:
    """Succeeds after HEALTHY_IN_A_ROW consecutive 200s from the new API's /api/health, within the timeout."""
    probe = "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/api/health', timeout=3)"
    check = release.compose("exec", "-T", "api", "python3", "-c", probe, api=True)
    timeout = release.settings.service.health_timeout
    # Loops run in a subshell: their own `exit` must not skip what an `&&` before them guards.
    return (
        f"(ok=0; for i in $(seq {timeout}); do "
        f"if ({check}) >/dev/null 2>&1; then ok=$((ok + 1)); [ $ok -ge {HEALTHY_IN_A_ROW} ] && exit 0; else ok=0; fi; "
        f"sleep 1; done; echo 'no {HEALTHY_IN_A_ROW} healthy answers in a row within {timeout}s' >&2; exit 1)"
    )


def wait_healthy(release: Release, services: tuple[str, ...]) -> str:
    """Wait until the infrastructure services' Docker health checks pass."""
    ids = release.compose("ps", "-q", *services)
    return (
        f"(for i in $(seq 90); do "
        f"states=$({ids} | xargs -r docker inspect -f '{{{{.State.Health.Status}}}}' | sort -u); "
        f'[ "$states" = healthy ] && exit 0; sleep 1; done; '
        f'echo "services {" ".join(services)} not healthy after 90s: $states" >&2; exit 1)'
    )


def switch_traffic(release: Release) -> str:
    """Point nginx at the release: its site and upstream files swapped into the folder nginx reads, nginx up
    (the first time) and checked; then a graceful reload. A config nginx refuses is swapped back."""
    shared = f"{release.settings.base_dir}/shared/nginx"
    files = ("appliance.conf", "upstream.inc")
    keep = "; ".join(
        f"cp -p {sh(shared + '/' + name)} {sh(shared + '/' + name + '.previous')} 2>/dev/null || true" for name in files
    )
    place = " && ".join(
        f"cp {sh(release.directory + '/nginx/' + name)} {sh(shared + '/' + name + '.next')} "
        f"&& mv {sh(shared + '/' + name + '.next')} {sh(shared + '/' + name)}"
        for name in files
    )
    restore = "; ".join(f"mv {sh(shared + '/' + name + '.previous')} {sh(shared + '/' + name)}" for name in files)
    check = release.compose("exec", "-T", "nginx", "nginx", "-t", "-q")
    refused = f"{{ {restore}; echo 'nginx -t refused the new config; previous one restored' >&2; exit 1; }}"
    up = release.compose("up", "-d", "--remove-orphans")
    reload = release.compose("exec", "-T", "nginx", "nginx", "-s", "reload")
    return (
        f"install -d -m 755 {sh(shared)} && {{ {keep}; }} && {place} && {up} && {{ {check} || {refused}; }} && {reload}"
    )


def move_current(release: Release) -> str:
    """`current` → the release, atomically (a new link renamed over the old one), noted in the history."""
    current = release.settings.base_dir + "/current"
    history = release.settings.base_dir + "/shared/history"
    link = f"ln -sfn {sh(release.directory)} {sh(current + '.next')} && mv -T {sh(current + '.next')} {sh(current)}"
    return f"{link} && echo {sh(release.version)} >> {sh(history)}"


def rollback_target(history: list[str], current: str) -> str | None:
    """The release that served before the current one: the last other version in the history."""
    return next((version for version in reversed(history) if version != current), None)


def prepare_steps(config: Config, release: Release, files: list[ManagedFile]) -> list[Step]:
    """A new release's files, checks, databases and migrations: nothing here touches live traffic."""
    settings = config.settings
    infra = ("postgres", "redis", *(("llm-stub",) if settings.service.llm_stub else ()))
    nginx_check = (
        f"docker run --rm --pull never --add-host api-{release.slug}:127.0.0.1 "
        f"-v {sh(release.directory + '/nginx')}:/etc/nginx/conf.d:ro "
        f"-v {sh(settings.base_dir + '/shared/certs')}:/etc/appliance/certs:ro "
        f"{sh(settings.images.nginx)} nginx -t -q"
    )
    return [
        *files,
        Always(
            "validate release",
            " && ".join([release.compose("config", "-q"), release.compose("config", "-q", api=True), nginx_check]),
            "compose config and nginx -t accept the release",
        ),
        Always("databases up", f"{release.compose('up', '-d', *infra)} && {wait_healthy(release, infra[:2])}", "start"),
        Always(
            "migrations",
            release.compose("run", "--rm", "--no-deps", "api", "python3", "-m", "service.migrate", api=True),
            "apply database migrations",
        ),
    ]


def switch_steps(release: Release, previous: Release | None) -> list[Step]:
    """The release's API up, its health gate, nginx switched to it, `current` moved, the previous API drained."""
    steps: list[Step] = [
        Always(f"API {release.version} up", release.compose("up", "-d", api=True), "start the API"),
        Always("health gate", health_gate(release), f"{HEALTHY_IN_A_ROW} healthy answers in a row"),
        Always("switch traffic", switch_traffic(release), "nginx to the new API, graceful reload"),
        Always("current release", move_current(release), f"current → {release.version}"),
    ]
    if previous is not None and previous.slug != release.slug:
        grace = str(release.settings.service.graceful_timeout + 5)
        steps.append(
            Always(
                f"drain API {previous.version}",
                previous.compose("stop", "-t", grace, api=True) + " && " + previous.compose("rm", "-f", api=True),
                "let in-flight requests finish, then stop the previous API",
            )
        )
    return steps


def _current_release(remote: RemoteHost, settings: Settings) -> Release | None:
    found = remote.run(f"readlink {sh(settings.base_dir + '/current')}")
    if found.exit_code != 0 or not found.stdout.strip():
        return None
    return Release(settings, found.stdout.strip().rsplit("/", 1)[-1])


def _failure_report(remote: RemoteHost, release: Release) -> str:
    logs = remote.run(release.compose("logs", "--no-color", "--tail", "20", "api", api=True)).stdout
    probe = (
        "import urllib.request as u\n"
        "try:\n  print(u.urlopen('http://127.0.0.1:8000/api/health', timeout=3).read().decode())\n"
        "except Exception as e:\n  print(repr(e), getattr(e, 'read', lambda: b'')().decode())"
    )
    health = remote.run(release.compose("exec", "-T", "api", "python3", "-c", probe, api=True)).stdout
    return f"last API log lines:\n{logs.rstrip()}\nhealth answer: {health.strip() or '(none)'}"


def audit_line(settings: Settings, entry: Mapping[str, object]) -> str:
    """Append one JSON line to the host's audit log (append-only by convention and mode 0600)."""
    path = f"{settings.base_dir}/shared/audit.jsonl"
    return f"umask 077; printf '%s\\n' {sh(json.dumps(entry, sort_keys=True))} >> {sh(path)}"


def _who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _bootstrapped(remote: RemoteHost, settings: Settings) -> None:
    if remote.run(f"test -d {sh(settings.base_dir + '/bin')}").exit_code != 0:
        missing = f"{settings.base_dir}/bin missing"
        raise StepFailed(f"{settings.hosts[0].target}: not bootstrapped ({missing}): run inv bootstrap first")


def _run_locked(
    remote: RemoteHost, executor: Executor, command: str, release: Release, previous: Release | None, steps: list[Step]
) -> list[StepResult]:
    """Apply `steps` under the host's deploy lock, append the outcome to the audit log, always unlock."""
    settings = release.settings
    started = time.time()
    holder = {"who": _who(), "command": command, "version": release.version, "since": started}
    if remote.run(acquire_lock(settings, holder)).exit_code != 0:
        held = remote.run(f"cat {sh(lock_dir(settings) + '/holder.json')}").stdout
        raise StepFailed(f"{settings.hosts[0].target}: {lock_holder_message(held, time.time())}")
    try:
        results = executor.apply_all(steps)
        failed = next((result for result in results if result.status == "failed"), None)
        if failed is not None and failed.step in ("health gate", f"API {release.version} up"):
            # Traffic never moved: take the unhealthy API away and show why it failed.
            report = _failure_report(remote, release)
            remote.run(release.compose("rm", "-s", "-f", api=True))
            failed.error += "\n" + executor.redact(report)
        return results
    finally:
        outcome = "failed" if any(result.status == "failed" for result in executor.results) else "ok"
        entry = {
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "who": _who(),
            "command": command,
            "version": release.version,
            "previous": previous.version if previous else None,
            "result": outcome,
            "seconds": round(time.time() - started, 1),
        }
        remote.run(audit_line(settings, entry))
        remote.run(f"rm -rf {sh(lock_dir(settings))}")


def deploy(
    config: Config,
    image: str,
    version: str,
    check: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[StepResult]:
    """Put release `version` (API image `image`, already built locally) on the config's host."""
    settings = config.settings
    if settings.images.transport == "registry":
        # Otherwise images would still travel over SSH while the setting says they go through a registry.
        raise ConfigError(f"{config.path}: images.transport: 'registry' is not built yet: use 'ssh'")
    ensure_generated(config.secrets_path)
    secrets = load_secrets(config.secrets_path)
    secrets.require(["AI_API_KEY"])
    release = Release(settings, version)
    with open_host(config) as remote:
        _bootstrapped(remote, settings)
        facts = gather_facts(remote, settings.base_dir)
        previous = _current_release(remote, settings)
        files = [
            ManagedFile(item.path, item.content.encode(), item.mode)
            for item in release_files(config, secrets, version, reveal=True, memory_mb=facts.memory_mb)
        ]
        files.append(ManagedFile(f"{release.directory}/slug", f"{release.slug}\n".encode()))
        executor = Executor(remote, check=check, redact=secrets.redact, progress=progress)
        engine = docker.from_env()
        release_image = api_image(settings, version)
        if image != release_image and not check:
            # Releases always run `api:VERSION`, so a given image is tagged with the release's name.
            local_image(engine, image)  # one clear line if it is missing
            repository, tag = release_image.rsplit(":", 1)
            engine.images.get(image).tag(repository, tag)
        refs = [release_image, settings.images.postgres, settings.images.redis, settings.images.nginx]
        steps = [
            *images_on_host(engine, refs),
            *prepare_steps(config, release, files),
            *switch_steps(release, previous),
        ]
        if check:
            return executor.apply_all(steps)
        return _run_locked(remote, executor, "deploy", release, previous, steps)


def rollback(config: Config, to: str | None = None, check: bool = False) -> list[StepResult]:
    """Serve an earlier release again (default: the one before the current), through the same health gate."""
    settings = config.settings
    secrets = load_secrets(config.secrets_path)
    target_host = settings.hosts[0].target
    with open_host(config) as remote:
        _bootstrapped(remote, settings)
        current = _current_release(remote, settings)
        if current is None:
            raise StepFailed(f"{target_host}: nothing deployed yet: run inv deploy")
        history = remote.run(f"cat {sh(settings.base_dir + '/shared/history')}").stdout.split()
        version = to or rollback_target(history, current.version)
        if version is None:
            raise StepFailed(f"{target_host}: no earlier release to roll back to (history: {' '.join(history)})")
        release = Release(settings, version)
        kept = remote.run(
            f"test -f {sh(release.directory + '/api.yml')} && "
            f"docker image inspect {sh(api_image(settings, version))} >/dev/null"
        )
        if kept.exit_code != 0:
            raise StepFailed(f"{target_host}: release {version} or its image is no longer on the host: deploy it again")
        executor = Executor(remote, check=check, redact=secrets.redact)
        steps = switch_steps(release, current)
        if check:
            return executor.apply_all(steps)
        return _run_locked(remote, executor, "rollback", release, current, steps)
