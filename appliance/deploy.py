"""`inv deploy`: a release onto a bootstrapped host; traffic moves only to an API that passed its health gate.

Order: lock → images → release files → validate → front end out of the image → stack up (all but nginx) → migrations →
LLM keys tried (a warning line, never a stop) → new API up → health gate → nginx switched by a graceful reload →
front end published → `current` moved → previous API drained and stopped → unlock.
If the new API never gets healthy, nginx was never pointed at it: the previous release keeps serving,
the new API is stopped, and its last log lines and health answer are printed.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import docker
import docker.errors

from appliance import notify
from appliance.bootstrap.tls import certificate_steps
from appliance.build import LOCK, bundle_commit
from appliance.config import Config, Settings
from appliance.errors import StepFailed
from appliance.executor import Executor, StepResult
from appliance.facts import gather_facts
from appliance.images import ImagesOnHost, LocalImage, images_on_host, local_image
from appliance.llm_check import LlmKeysWarning
from appliance.lock import (
    acquire_lock,
    audit_entry,
    audit_line,
    holder_file,
    lock_holder,
    lock_holder_message,
    operator,
    release_lock,
)
from appliance.registry import ImagePulled, RegistryLogin, push
from appliance.releases import PruneReleases, Release, current_release, manifest, rollback_target
from appliance.remote import RemoteHost, open_host
from appliance.render import api_image, check_artifact_key, monitoring_images, release_files
from appliance.secrets import Secrets, ensure_generated, load_secrets
from appliance.shell import sh
from appliance.steps import Action, Facts, ManagedFile, Run, Step
from appliance.views import health_probe
from appliance.warm import ApiUp, KeepWarm

LOCK_WAIT_SECONDS = 1800
WEB_IN_IMAGE = "/opt/app/web"  # the built front end inside the API image (service/Dockerfile)


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
    files = ("appliance.conf", "upstream.inc", "metrics.htpasswd")
    keep = "; ".join(
        f"cp -p {sh(shared + '/' + name)} {sh(shared + '/' + name + '.previous')} 2>/dev/null || true" for name in files
    )
    place = " && ".join(
        f"cp {sh(release.directory + '/nginx/' + name)} {sh(shared + '/' + name + '.next')} "
        f"&& mv {sh(shared + '/' + name + '.next')} {sh(shared + '/' + name)}"
        for name in files
    )
    restore = "; ".join(f"mv {sh(shared + '/' + name + '.previous')} {sh(shared + '/' + name)}" for name in files)
    nginx = release.container("nginx")
    check = 'docker exec "$n" nginx -t -q'
    refused = f"{{ {restore}; echo 'nginx -t refused the new config; previous one restored' >&2; exit 1; }}"
    # Only nginx, and only when none runs (a first deploy): the rest of the release's stack follows the switch
    # (release_stack), so traffic waits for neither. docker exec, not Compose's: a Compose start costs ~0.6 s.
    up = f'{{ [ -n "$n" ] || {{ {release.compose("up", "-d", "--no-deps", "nginx")} && n={nginx}; }}; }}'
    reload = 'docker exec "$n" nginx -s reload'
    return (
        f"install -d -m 755 {sh(shared)} && {{ {keep}; }} && {place} && n={nginx} && {up} "
        f"&& {{ {check} || {refused}; }} && {reload}"
    )


def release_stack(release: Release) -> str:
    """Every service of the release's stack as the release defines it: what a rollback restores (the relay and
    the stand-ins run the release's image; monitoring reads its files), and Prometheus scraping its API."""
    return release.compose("up", "-d", "--remove-orphans")


def extract_web(release: Release) -> str:
    """The front end, copied out of the release's API image into its folder, where a rollback finds it again."""
    target = release.directory + "/www"
    image = api_image(release.settings, release.version)
    copy = (
        f"docker run --rm --pull never --network none --entrypoint tar {sh(image)} -C {WEB_IN_IMAGE} -c . "
        f"| tar -x --no-same-owner -C {sh(target + '.next')}"
    )
    return (
        f"rm -rf {sh(target + '.next')} && install -d -m 755 {sh(target + '.next')} && {copy} && "
        f"test -s {sh(target + '.next/index.html')} && rm -rf {sh(target)} && mv -T {sh(target + '.next')} {sh(target)}"
    )


def publish_web(release: Release) -> str:
    """The release's front end into the folder nginx serves: assets first, the entry page last (renamed into
    place), so a page never names an asset that is not there yet. Assets no kept release has are then removed."""
    source = release.directory + "/www"
    root = release.settings.base_dir + "/shared/www"
    kept = release.settings.base_dir + "/releases"
    copy = f"tar -C {sh(source)} --exclude=./index.html -c . | tar -x --no-same-owner -C {sh(root)}"
    entry = (
        f"cp {sh(source + '/index.html')} {sh(root + '/.index.html.next')} "
        f"&& mv -f {sh(root + '/.index.html.next')} {sh(root + '/index.html')}"
    )
    stale = (
        f'(cd {sh(root + "/assets")} 2>/dev/null || exit 0; for name in *; do [ -e "$name" ] || continue; '
        f'ls {sh(kept)}/*/www/assets/"$name" >/dev/null 2>&1 || rm -f -- "$name"; done)'
    )
    return f"install -d -m 755 {sh(root)} && {copy} && {entry} && {stale}"


def move_current(release: Release) -> str:
    """`current` → the release, atomically (a new link renamed over the old one), noted in the history."""
    current = release.settings.base_dir + "/current"
    history = release.settings.base_dir + "/shared/history"
    link = f"ln -sfn {sh(release.directory)} {sh(current + '.next')} && mv -T {sh(current + '.next')} {sh(current)}"
    return f"{link} && echo {sh(release.version)} >> {sh(history)}"


def prepare_steps(config: Config, release: Release, files: list[ManagedFile], first: bool = False) -> list[Step]:
    """A new release's files, checks, databases and migrations: nothing here touches live traffic.

    `first`: the host has never served a release, so there is no data a backup could protect yet."""
    settings = config.settings
    # Every service of the stack's project but nginx (switch_traffic's), with the release's settings.
    services = f"$({release.compose('config', '--services')} | grep -vx nginx)"
    # The API projects' shared volume belongs to the stack's project, whose services never mount it: Compose v1
    # makes every volume a project declares, v2 only those its services mount, so it is made here, labelled
    # as Compose labels its own.
    project, volume = settings.name, "artifacts"
    shared_volume = sh(
        "docker", "volume", "create", "--label", f"com.docker.compose.project={project}",
        "--label", f"com.docker.compose.volume={volume}", f"{project}_{volume}",
    )  # fmt: skip
    stack_up = (
        f"services={services} && {release.compose('up', '-d', '--remove-orphans')} $services"
        f" && {shared_volume} >/dev/null"
    )
    nginx_check = (
        f"docker run --rm --pull never --add-host api-{release.slug}:127.0.0.1 "
        f"-v {sh(release.directory + '/nginx')}:/etc/nginx/conf.d:ro "
        f"-v {sh(settings.base_dir + '/shared/certs')}:/etc/appliance/certs:ro "
        f"{sh(settings.images.nginx)} nginx -t -q"
    )
    # Migrations change the schema: with backups configured, a fresh one is taken first (waiting for a
    # running cron backup rather than failing).
    backup = f"BACKUP_LOCK_WAIT=1800 {sh(settings.base_dir + '/bin/backup.sh')} --reason pre-deploy"
    wanted = settings.backup.enabled and not first
    backup_first = [Always("backup", backup, "a backup before migrations")] if wanted else []
    return [
        *files,
        Always(
            "validate release",
            " && ".join([release.compose("config", "-q"), release.compose("config", "-q", api=True), nginx_check]),
            "compose config and nginx -t accept the release",
        ),
        Always("front end", extract_web(release), "copy the front end out of the API image"),
        Always("stack up", f"{stack_up} && {wait_healthy(release, ('postgres', 'redis'))}", "start"),
        *backup_first,
        Always(
            "migrations",
            release.compose("run", "--rm", "--no-deps", "api", "python3", "-m", "service.migrate", api=True),
            "apply database migrations",
        ),
    ]


def switch_steps(release: Release, previous: Release | None, warm: bool = False) -> list[Step]:
    """The release's API up (woken when `warm` allows and it is in standby), nginx switched to it, `current` moved,
    the previous API kept warm or drained, then the rest of the release's stack."""
    steps: list[Step] = [
        ApiUp(release, allow_warm=warm),
        Always("switch traffic", switch_traffic(release), "nginx to the new API, graceful reload"),
        Always("publish front end", publish_web(release), "the release's front end into nginx's web root"),
        Always("current release", move_current(release), f"current → {release.version}"),
    ]
    if previous is not None and previous.slug != release.slug:
        steps.append(KeepWarm(previous, release))
    steps.append(Always("release stack", release_stack(release), "every service as the release defines it"))
    return steps


def _failure_report(remote: RemoteHost, release: Release) -> str:
    logs = remote.run(release.compose("logs", "--no-color", "--tail", "20", "api", api=True)).stdout
    health = remote.run(health_probe(release)).stdout
    return f"last API log lines:\n{logs.rstrip()}\nhealth answer: {health.strip() or '(none)'}"


def _bootstrapped(remote: RemoteHost, settings: Settings) -> None:
    if remote.run(f"test -d {sh(settings.base_dir + '/bin')}").exit_code != 0:
        missing = f"{settings.base_dir}/bin missing"
        raise StepFailed(f"{settings.hosts[0].target}: not bootstrapped ({missing}): run inv bootstrap first")


def _take_lock(remote: RemoteHost, settings: Settings, holder: Mapping[str, object], wait: bool) -> None:
    """The deploy lock, or one line naming its holder; with `wait`, poll until it is free (up to 30 min)."""
    deadline = time.monotonic() + (LOCK_WAIT_SECONDS if wait else 0)
    while remote.run(acquire_lock(settings, holder)).exit_code != 0:
        held = lock_holder_message(remote.run(f"cat {sh(holder_file(settings))}").stdout, time.time())
        if time.monotonic() >= deadline:
            raise StepFailed(f"{settings.hosts[0].target}: {held}")
        time.sleep(2)


def break_lock(config: Config) -> str:
    """Remove the host's deploy lock; the audit log records who broke whose lock. One line for the operator."""
    settings = config.settings
    target = settings.hosts[0].target
    with open_host(config) as remote:
        held = remote.run(f"cat {sh(holder_file(settings))}")
        if held.exit_code != 0:
            return f"{target}: no deploy lock is held"
        holder = lock_holder(held.stdout, time.time())
        entry = audit_entry("lock.break", holder=held.stdout.strip(), result="ok")
        remote.run(f"{release_lock(settings)} && {audit_line(settings, entry)}")
    what = f"{holder[0]}, held for {holder[1]}s" if holder else "holder unreadable"
    return f"{target}: deploy lock removed ({what})"


def _announce(channels: notify.Channels, settings: Settings, env: str, entry: Mapping[str, object], error: str) -> None:
    """Tell the configured WeCom group / mailbox how a deploy or rollback ended; a lost message is a warning."""
    if not (settings.notify.deploys and channels.configured):
        return
    subject = f"{settings.name} ({env}): {entry['command']} {entry['version']} {entry['result']}"
    lines = [
        f"host: {settings.hosts[0].target}",
        f"by: {entry['who']}",
        f"previous release: {entry['previous'] or 'none'}",
        f"took: {entry['seconds']}s",
        *([f"failed: {error}"] if error else []),
    ]
    for failure in notify.send(channels, subject, lines):
        sys.stderr.write(f"warning: notification not delivered: {failure}\n")


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
    _take_lock(remote, settings, holder, wait)
    finished = False
    try:
        results = executor.apply_all(steps)
        failed = next((result for result in results if result.status == "failed"), None)
        if failed is not None and failed.step == f"API {release.version} up":
            # Traffic never moved: take the unhealthy API away and show why it failed.
            report = _failure_report(remote, release)
            remote.run(release.compose("rm", "-s", "-f", api=True))
            failed.error += "\n" + executor.redact(report)
        moved = any(result.step == "switch traffic" and result.status == "changed" for result in results)
        if failed is not None and not moved and previous is not None:
            # The stack-up gave services the new release's files and image (the relay, the stand-ins): the
            # release that keeps serving gets its own stack back.
            remote.run(release_stack(previous))
        finished = True
        return results
    finally:
        failed = next((result for result in executor.results if result.status == "failed"), None)
        outcome = "failed" if failed else "ok" if finished else "interrupted"
        entry = audit_entry(
            command,
            version=release.version,
            previous=previous.version if previous else None,
            result=outcome,
            seconds=round(time.time() - started, 1),
        )
        remote.run(audit_line(settings, entry))
        remote.run(release_lock(settings))
        announce(entry, f"{failed.step}: {failed.error.splitlines()[0]}" if failed else "")


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


def release_images(engine: docker.DockerClient, refs: list[str], api: LocalImage) -> ImagesOnHost:
    """The images step of a release: the API image as given, the others as the local engine has them."""
    return ImagesOnHost((api, *images_on_host(engine, [ref for ref in refs if ref != api.ref]).images))


def build_pending(ref: str, settings: Settings) -> StepResult:
    """check mode's line for the API image `inv deploy` would build first (nothing on the host runs it)."""
    return StepResult("build API image", "pending", 0.0, [f"build {ref} for {settings.images.platform} ({LOCK})"])


def deploy_secrets(config: Config) -> Secrets:
    """The secrets a deploy needs, generated ones made first; a missing one is one line, before any build or host."""
    ensure_generated(config.secrets_path)
    secrets = load_secrets(config.secrets_path)
    through_registry = config.settings.images.transport == "registry"
    secrets.require(["AI_API_KEY", *(["REGISTRY_PASSWORD"] if through_registry else [])])
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
    through_registry = settings.images.transport == "registry"
    secrets = deploy_secrets(config)
    release = Release(settings, version)
    with open_host(config) as remote:
        _bootstrapped(remote, settings)
        facts = gather_facts(remote, settings.base_dir)
        previous = current_release(remote, settings)
        rendered = release_files(config, secrets, version, reveal=True, memory_mb=facts.memory_mb)
        files = [ManagedFile(item.path, item.content.encode(), item.mode) for item in rendered]
        files.append(ManagedFile(f"{release.directory}/slug", f"{release.slug}\n".encode()))
        executor = Executor(remote, check=check, redact=secrets.redact, progress=progress)
        engine = docker.from_env()
        release_image = api_image(settings, version)
        if image != release_image and not check:
            # Releases always run `api:VERSION`, so a given image is tagged with the release's name.
            local_image(engine, image)  # one clear line if it is missing
            repository, tag = release_image.rsplit(":", 1)
            engine.images.get(image).tag(repository, tag)
        api = sent_api_image(engine, image, release_image, check)
        images = settings.images
        roles = {"api": release_image, "postgres": images.postgres, "redis": images.redis, "nginx": images.nginx}
        roles |= {f"monitoring-{index}": ref for index, ref in enumerate(monitoring_images(settings))}
        if not check:
            ids = {role: _local_id(engine, ref) for role, ref in roles.items()}
            env_file = next(item.content for item in rendered if item.path.endswith("/api.env")).encode()
            body = manifest(version, ids, env_file, bundle_commit(), operator())
            files.append(ManagedFile(f"{release.directory}/manifest.json", body))
        if through_registry:
            password = secrets.require(["REGISTRY_PASSWORD"])["REGISTRY_PASSWORD"].reveal()
            registry, user = settings.images.registry or "", settings.images.registry_user or ""
            if not check:
                push(engine, release_image, user, password)
            image_steps: list[Step] = [RegistryLogin(registry, user, password), *map(ImagePulled, roles.values())]
        else:
            image_steps = [release_images(engine, list(roles.values()), api)]
        steps = [
            *image_steps,
            *prepare_steps(config, release, files, first=previous is None),
            LlmKeysWarning(release),  # the new keys tried upstream before traffic moves; a warning, never a stop
            *switch_steps(release, previous),
            PruneReleases(settings, settings.keep_releases),
            # Last: nginx now serves the ACME challenge folder, and a failed request leaves the release serving.
            *certificate_steps(config),
        ]
        if check:
            # `inv deploy` builds the image before anything reaches the host; --check builds nothing.
            return [*([] if api.image_id else [build_pending(api.ref, settings)]), *executor.apply_all(steps)]
        announce = functools.partial(_announce, notify.channels_for(settings, secrets), settings, config.env)
        return _run_locked(remote, executor, "deploy", release, previous, steps, announce, wait)


def rollback(config: Config, to: str | None = None, check: bool = False, wait: bool = False) -> list[StepResult]:
    """Serve an earlier release again (default: the one before the current), through the same health gate."""
    settings = config.settings
    secrets = load_secrets(config.secrets_path)
    target_host = settings.hosts[0].target
    with open_host(config) as remote:
        _bootstrapped(remote, settings)
        current = current_release(remote, settings)
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
        steps = switch_steps(release, current, warm=True)
        if check:
            return executor.apply_all(steps)
        announce = functools.partial(_announce, notify.channels_for(settings, secrets), settings, config.env)
        return _run_locked(remote, executor, "rollback", release, current, steps, announce, wait)
