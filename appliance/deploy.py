"""`inv deploy`: a release onto a bootstrapped host; traffic moves only to an API that passed its health gate.

Order: lock → images → release files → validate → front end out of the image → stack up (all but nginx) → migrations →
LLM keys tried (a warning line, never a stop) → new API up → health gate → nginx switched by a graceful reload →
front end published → `current` moved → previous API drained and stopped → unlock.
If the new API never gets healthy, nginx was never pointed at it: the previous release keeps serving,
the new API is stopped, and its last log lines and health answer are printed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import docker
import docker.errors

from appliance import frontend, notify, procedure
from appliance import release_commands as commands
from appliance.bootstrap.tls import certificate_steps
from appliance.build import LOCK, bundle_commit
from appliance.config import Config, Settings
from appliance.errors import StepFailed
from appliance.executor import Executor, StepResult
from appliance.facts import gather_facts
from appliance.frontend import Shipped
from appliance.images import LocalImage, images_on_host, local_image, operator_engine
from appliance.llm_check import LlmKeysWarning
from appliance.lock import audit_entry, operator
from appliance.releases import PruneReleases, Release, current_release, manifest, rollback_target
from appliance.remote import RemoteHost, open_host
from appliance.render import (
    api_image,
    check_artifact_key,
    data_images,
    monitoring_images,
    release_files,
    stack_api_image,
)
from appliance.secrets import Secrets, ensure_generated, load_secrets
from appliance.stack_steps import MonitoringFiles, ReleaseStack, StackUp
from appliance.steps import Always, ManagedFile, Step
from appliance.transport import transport_for, transport_secrets
from appliance.warm import ApiUp, KeepWarm


@dataclass(frozen=True)
class SwitchTraffic(Always):
    """The phase after which traffic has moved: a failure before it leaves the previous release serving."""


def prepare_steps(
    config: Config,
    release: Release,
    files: list[ManagedFile],
    first: bool = False,
    stack_image: str = "",
    front: Shipped | None = None,
) -> list[Step]:
    """A new release's files, checks, databases and migrations: nothing here touches live traffic.

    `first`: the host has never served a release, so there is no data a backup could protect yet. `stack_image`:
    the API image's content tag the stack's services run (render.stack_api_image), made on the host here. `front`:
    the team's front end, shipped into the release and put beside the console (appliance/frontend.py)."""
    ship, assemble = frontend.release_steps(config, release, front)
    wanted = config.settings.backup.enabled and not first
    backup = [Always("backup", commands.pre_deploy_backup(release), "a backup before migrations")] if wanted else []
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
        Always("migrations", commands.migrate(release), "apply database migrations"),
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


def _run_locked(
    remote: RemoteHost,
    executor: Executor,
    command: str,
    release: Release,
    previous: Release | None,
    steps: list[Step],
    announce: Callable[[Mapping[str, object], str], None],
    wait: bool = False,
) -> list[StepResult]:
    """Apply `steps` under the host's deploy lock, append the outcome to the audit log, always unlock, announce."""
    settings = release.settings
    started = time.time()
    holder = {"who": operator(), "command": command, "version": release.version, "since": started}
    procedure.take_lock(remote, settings, holder, wait)
    finished = False
    try:
        results = executor.apply_all(steps)
        # apply_all stops after the first failure: the results pair with the first steps.
        applied = list(zip(steps, results, strict=False))
        failed = next(((step, result) for step, result in applied if result.status == "failed"), None)
        if failed is not None and isinstance(failed[0], ApiUp):
            # Traffic never moved: take the unhealthy API away and show why it failed.
            failed[1].error += "\n" + executor.redact(procedure.remove_failed_api(remote, release))
        moved = any(isinstance(step, SwitchTraffic) and result.status == "changed" for step, result in applied)
        if failed is not None and not moved and previous is not None:
            procedure.restore_stack(remote, previous)
        finished = True
        return results
    finally:
        failure = next((result for result in executor.results if result.status == "failed"), None)
        outcome = "failed" if failure else "ok" if finished else "interrupted"
        entry = audit_entry(
            command,
            version=release.version,
            previous=previous.version if previous else None,
            result=outcome,
            seconds=round(time.time() - started, 1),
        )
        procedure.record_and_unlock(remote, settings, entry)
        announce(entry, f"{failure.step}: {failure.error.splitlines()[0]}" if failure else "")


def _local_id(engine: docker.DockerClient, ref: str) -> str:
    """The image's ID in the operator's engine; "" for one only the host has (pulled from a registry)."""
    try:
        return str(engine.images.get(ref).id)
    except docker.errors.ImageNotFound:
        return ""


def sent_api_image(engine: docker.DockerClient, image: str, release_image: str, check: bool) -> LocalImage:
    """The API image as the host gets it, under the release's name: `image` from the local engine, or, in check
    mode (which builds nothing), the release's own image still to be built."""
    if check and image == release_image and not _local_id(engine, image):
        return LocalImage(release_image, "", 0)  # no ID yet: the host cannot have it
    found = local_image(engine, image)
    return LocalImage(release_image, found.image_id, found.size)


def other_images(engine: docker.DockerClient, refs: list[str], api: LocalImage) -> tuple[LocalImage, ...]:
    """A release's images but the API's, as the local engine has them."""
    return images_on_host(engine, [ref for ref in refs if ref != api.ref]).images


def build_pending(ref: str, settings: Settings) -> StepResult:
    """check mode's line for the API image `inv deploy` would build first (nothing on the host runs it)."""
    return StepResult("build API image", "pending", 0.0, [f"build {ref} for {settings.images.platform} ({LOCK})"])


def required_secrets(settings: Settings) -> list[str]:
    """The secrets a deploy refuses to start without (the generated ones it makes itself); `inv config` warns."""
    return ["AI_API_KEY", *transport_secrets(settings)]


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
    progress: Callable[[str, int, int], None] | None = None,
    wait: bool = False,
) -> list[StepResult]:
    """Put release `version` (API image `image`, already built locally) on the config's host."""
    settings = config.settings
    front = frontend.shipped(config)  # built and checked here, before the host is touched
    secrets = deploy_secrets(config)
    release = Release(settings, version)
    with open_host(config) as remote:
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
        images = settings.images
        roles = {"api": release_image, **data_images(settings), "nginx": images.nginx}
        roles |= {f"monitoring-{index}": ref for index, ref in enumerate(monitoring_images(settings))}
        if not check:
            ids = {role: _local_id(engine, ref) for role, ref in roles.items()}
            env_file = next(item.content for item in rendered if item.path.endswith("/api.env")).encode()
            body = manifest(version, ids, env_file, bundle_commit(), operator())
            files.append(ManagedFile(f"{release.directory}/manifest.json", body))
        others = other_images(engine, list(roles.values()), api)
        transport = transport_for(settings, engine, secrets)
        image_steps = transport.steps(api, others, check)
        steps = [
            *image_steps,
            *prepare_steps(
                config, release, files, previous is None, stack_api_image(settings, version, api.image_id), front
            ),
            LlmKeysWarning(release),  # the new keys tried upstream before traffic moves; a warning, never a stop
            *switch_steps(release, previous),
            PruneReleases(settings, settings.keep_releases),
            *transport.prune_steps(),
            # Last: nginx now serves the ACME challenge folder, and a failed request leaves the release serving.
            *certificate_steps(config),
        ]
        if check:
            # `inv deploy` builds the image before anything reaches the host; --check builds nothing.
            return [*([] if api.image_id else [build_pending(api.ref, settings)]), *executor.apply_all(steps)]
        announce = functools.partial(procedure.announce, notify.channels_for(settings, secrets), settings, config.env)
        return _run_locked(remote, executor, "deploy", release, previous, steps, announce, wait)


def rollback(config: Config, to: str | None = None, check: bool = False, wait: bool = False) -> list[StepResult]:
    """Serve an earlier release again (default: the one before the current), through the same health gate."""
    settings = config.settings
    secrets = load_secrets(config.secrets_path)
    target_host = settings.hosts[0].target
    with open_host(config) as remote:
        procedure.require_bootstrapped(remote, settings)
        current = current_release(remote, settings)
        if current is None:
            raise StepFailed(f"{target_host}: nothing deployed yet: run inv deploy")
        history = procedure.history(remote, settings)
        version = to or rollback_target(history, current.version)
        if version is None:
            raise StepFailed(f"{target_host}: no earlier release to roll back to (history: {' '.join(history)})")
        release = Release(settings, version)
        procedure.require_kept(remote, release)
        executor = Executor(remote, check=check, redact=secrets.redact)
        steps = switch_steps(release, current, warm=True)
        if check:
            return executor.apply_all(steps)
        announce = functools.partial(procedure.announce, notify.channels_for(settings, secrets), settings, config.env)
        return _run_locked(remote, executor, "rollback", release, current, steps, announce, wait)
