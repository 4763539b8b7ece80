"""`inv deploy`: a release onto a bootstrapped host; traffic moves only to an API that passed its health gate.

Order: lock → images → release files → validate → front end out of the image → stack up (all but nginx) → migrations →
LLM keys tried (a warning line, never a stop) → new API up → health gate → nginx switched by a graceful reload →
front end published → `current` moved → previous API drained and stopped → unlock.
If the new API never gets healthy, nginx was never pointed at it: the previous release keeps serving,
the new API is stopped, and its last log lines and health answer are printed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from appliance import frontend, notify, procedure
from appliance import release_commands as commands
from appliance.bootstrap.system import Noted
from appliance.bootstrap.tls import certificate_steps
from appliance.build import LOCK, bundle_commit
from appliance.config import Config, Settings
from appliance.errors import StepFailed
from appliance.executor import Executor, OnProgress, StepResult
from appliance.facts import gather_facts
from appliance.frontend import Shipped
from appliance.host_release import HostRelease, SwitchTraffic, check_results, run_locked
from appliance.images import local_id, local_image, operator_engine, other_images, sent_api_image
from appliance.llm_check import LlmKeysWarning
from appliance.lock import operator
from appliance.releases import PruneReleases, Release, current_release, manifest, rollback_target
from appliance.remote import RemoteHost, open_host
from appliance.render import (
    api_image,
    check_artifact_key,
    release_files,
    stack_api_image,
    stack_images,
)
from appliance.secrets import Secrets, ensure_generated, load_secrets
from appliance.stack_steps import MonitoringFiles, ReleaseStack, StackUp
from appliance.steps import Always, ManagedFile, Step
from appliance.transport import transport_for, transport_secrets
from appliance.warm import ApiUp, KeepWarm


def prepare_steps(
    config: Config,
    release: Release,
    files: list[ManagedFile],
    first: bool = False,
    stack_image: str = "",
    front: Shipped | None = None,
    migrated_on: str = "",
) -> list[Step]:
    """A new release's files, checks, databases and migrations: nothing here touches live traffic.

    `first`: the host has never served a release, so there is no data a backup could protect yet. `stack_image`:
    the API image's content tag the stack's services run (render.stack_api_image), made on the host here. `front`:
    the team's front end, shipped into the release and put beside the console (appliance/frontend.py).
    `migrated_on`: the canary of several hosts, where this release's backup and migrations already ran (their
    data is shared), so this host skips them."""
    ship, assemble = frontend.release_steps(config, release, front)
    wanted = config.settings.backup.enabled and not first and not migrated_on
    backup = [Always("backup", commands.pre_deploy_backup(release), "a backup before migrations")] if wanted else []
    migrate: Step = Always("migrations", commands.migrate(release), "apply database migrations")
    if migrated_on:
        migrate = Noted("migrations", f"skipped: they ran on {migrated_on}, the canary, under the advisory lock")
    tag = commands.tag_stack_image(release, stack_image)
    same = stack_image in ("", api_image(release.settings, release.version))
    image = [] if same else [Always("stack image", tag, f"the API image also as {stack_image}, for the stack")]
    return [
        *files,
        Always("validate release", commands.validate(release), "compose config and nginx -t accept the release"),
        *ship,
        Always("front end", commands.extract_web(release), "copy the front end out of the API image"),
        *assemble,
        *image,
        StackUp(release),
        *backup,
        migrate,
    ]


def switch_steps(release: Release, previous: Release | None, warm: bool = False) -> list[Step]:
    """The release's API up (woken when `warm` allows and it is in standby), nginx switched to it, `current` moved,
    the previous API kept warm or drained, then the rest of the release's stack."""
    steps: list[Step] = [
        ApiUp(release, allow_warm=warm),
        SwitchTraffic("switch traffic", commands.switch_traffic(release), "nginx to the new API, graceful reload"),
        Always("publish front end", commands.publish_web(release), "the release's front end into nginx's web root"),
        Always("current release", commands.move_current(release), f"current → {release.version}"),
    ]
    if previous is not None and previous.slug != release.slug:
        steps.append(KeepWarm(previous, release))
    if release.settings.monitoring.enabled:
        steps.append(MonitoringFiles(release))
    steps.append(ReleaseStack(release))
    return steps


def build_pending(ref: str, settings: Settings) -> StepResult:
    """check mode's line for the API image `inv deploy` would build first (nothing on the host runs it)."""
    return StepResult("build API image", "pending", 0.0, [f"build {ref} for {settings.images.platform} ({LOCK})"])


def required_secrets(settings: Settings) -> list[str]:
    """The secrets a deploy refuses to start without (the generated ones it makes itself); `inv config` warns.
    Several hosts with monitoring: METRICS_PASSWORD, with which the first host's Prometheus scrapes the others."""
    several = len(settings.hosts) > 1 and settings.monitoring.enabled
    return ["AI_API_KEY", *transport_secrets(settings), *(["METRICS_PASSWORD"] if several else [])]


def deploy_secrets(config: Config) -> Secrets:
    """The secrets a deploy needs, generated ones made first; a missing one is one line, before any build or host."""
    ensure_generated(config.secrets_path)
    secrets = load_secrets(config.secrets_path)
    secrets.require(required_secrets(config.settings))
    check_artifact_key(config, secrets)
    return secrets


def deploy(
    config: Config,
    image: str,
    version: str,
    check: bool = False,
    progress: OnProgress | None = None,
    wait: bool = False,
) -> list[StepResult]:
    """Put release `version` (API image `image`, already built locally) on the config's host."""
    front = frontend.shipped(config)  # built and checked here, before the host is touched
    secrets = deploy_secrets(config)
    return _on_host(
        config, lambda remote: plan_deploy(config, remote, secrets, image, version, check, progress, front), check, wait
    )


def _on_host(config: Config, plan: Callable[[RemoteHost], HostRelease], check: bool, wait: bool) -> list[StepResult]:
    """One host's deploy or rollback: planned over its session, then applied under its lock (check mode: only
    what each step would do)."""
    with open_host(config) as remote:
        change = plan(remote)
        if check:
            return check_results(change)
        return run_locked(change, wait)


def plan_deploy(
    config: Config,
    remote: RemoteHost,
    secrets: Secrets,
    image: str,
    version: str,
    check: bool = False,
    progress: OnProgress | None = None,
    front: Shipped | None = None,
    migrated_on: str = "",
) -> HostRelease:
    """Release `version` for the config's (first) host, read from it: every step, nothing applied yet.
    `migrated_on`: the canary where migrations ran (several hosts), see prepare_steps."""
    settings = config.settings
    release = Release(settings, version)
    procedure.require_bootstrapped(remote, settings)
    facts = gather_facts(remote, settings.base_dir)
    previous = current_release(remote, settings)
    executor = Executor(remote, check=check, redact=secrets.redact, progress=progress)
    engine = operator_engine()
    release_image = api_image(settings, version)
    if image != release_image and not check:
        # Releases always run `api:VERSION`, so a given image is tagged with the release's name.
        local_image(engine, image)  # one clear line if it is missing
        repository, tag = release_image.rsplit(":", 1)
        engine.images.get(image).tag(repository, tag)
    api = sent_api_image(engine, image, release_image, check)
    rendered = release_files(config, secrets, version, True, facts.memory_mb, api.image_id)
    files = [ManagedFile(item.path, item.content.encode(), item.mode) for item in rendered]
    files.append(ManagedFile(f"{release.directory}/slug", f"{release.slug}\n".encode()))
    roles = {"api": release_image, **stack_images(config)}  # this host's own: the first alone runs Prometheus
    if not check:
        ids = {role: local_id(engine, ref) for role, ref in roles.items()}
        env_file = next(item.content for item in rendered if item.path.endswith("/api.env")).encode()
        body = manifest(version, ids, env_file, bundle_commit(), operator())
        files.append(ManagedFile(f"{release.directory}/manifest.json", body))
    others = other_images(engine, list(roles.values()), api)
    transport = transport_for(settings, engine, secrets)
    image_steps = transport.steps(api, others, check)
    stack_image = stack_api_image(settings, version, api.image_id)
    steps = [
        *image_steps,
        *prepare_steps(config, release, files, previous is None, stack_image, front, migrated_on),
        LlmKeysWarning(release),  # the new keys tried upstream before traffic moves; a warning, never a stop
        *switch_steps(release, previous),
        PruneReleases(settings, settings.keep_releases),
        *transport.prune_steps(),
        # Last: nginx now serves the ACME challenge folder, and a failed request leaves the release serving.
        *certificate_steps(config),
    ]
    if check and not api.image_id:
        # `inv deploy` builds the image before anything reaches the host; --check builds nothing.
        executor.results.append(build_pending(api.ref, settings))
    announce = functools.partial(procedure.announce, notify.channels_for(settings, secrets), settings, config.env)
    return HostRelease(remote, executor, "deploy", release, previous, steps, announce, settings.hosts[0].label)


def plan_rollback(
    config: Config, remote: RemoteHost, secrets: Secrets, to: str | None, check: bool, follower: bool = False
) -> HostRelease:
    """The rollback of the config's (first) host to release `to` (default: the one before its current).
    `follower`: a host after the canary of several, which may already serve `to` (a roll that stopped early)."""
    settings = config.settings
    target_host = settings.hosts[0].target
    procedure.require_bootstrapped(remote, settings)
    current = current_release(remote, settings)
    if current is None:
        raise StepFailed(f"{target_host}: nothing deployed yet: run inv deploy")
    history = procedure.history(remote, settings)
    version = to or rollback_target(history, current.version)
    if version is None:
        raise StepFailed(f"{target_host}: no earlier release to roll back to (history: {' '.join(history)})")
    release = Release(settings, version)
    executor = Executor(remote, check=check, redact=secrets.redact)
    announce = functools.partial(procedure.announce, notify.channels_for(settings, secrets), settings, config.env)
    label = settings.hosts[0].label
    if follower and version == current.version:
        steps: list[Step] = [Noted("switch traffic", f"skipped: {label} already serves {version}")]
        return HostRelease(remote, executor, "rollback", release, current, steps, announce, label)
    procedure.require_kept(remote, release)
    return HostRelease(
        remote, executor, "rollback", release, current, switch_steps(release, current, warm=True), announce, label
    )


def rollback(config: Config, to: str | None = None, check: bool = False, wait: bool = False) -> list[StepResult]:
    """Serve an earlier release again (default: the one before the current), through the same health gate."""
    secrets = load_secrets(config.secrets_path)
    return _on_host(config, lambda remote: plan_rollback(config, remote, secrets, to, check), check, wait)
