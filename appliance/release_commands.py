"""A release's commands on the host, as values: validate, stack up, migrate, health gate, switch, publish, drain.

Nothing here runs anything (Kamal's `commands/*.rb`): deploy's steps carry these commands, the executor runs
them, and `tests/appliance/test_deploy_plan.py` runs some through real bash without a host.
"""

from __future__ import annotations

from appliance.releases import Release
from appliance.render import MIGRATION_URL_FILE, api_image, stack_data_services
from appliance.shell import sh

WEB_IN_IMAGE = "/opt/app/web"  # the built front end inside the API image (service/Dockerfile)
HEALTH_URL = "http://127.0.0.1:8000/api/health"  # the API's health answer, asked inside its own container
# The site's health answer as the host itself reaches it through its nginx (a load balancer asks the same path).
SITE_HEALTH_URL = "https://127.0.0.1/api/health"
NGINX_FILES = ("appliance.conf", "upstream.inc", "metrics.htpasswd")  # what a switch swaps into shared/nginx
# The release's monitoring files (render.monitoring_files) that a switch publishes into shared/monitoring, and
# the stack's service that reads each one.
MONITORING_READERS = {
    "prometheus.yml": "prometheus",
    "alerts.yml": "prometheus",
    "alertmanager.yml": "alertmanager",
    "notify.py": "relay",
}


def wait_healthy(release: Release, services: tuple[str, ...]) -> str:
    """Wait until the infrastructure services' Docker health checks pass."""
    ids = release.compose("ps", "-q", *services)
    return (
        f"(for i in $(seq 90); do "
        f"states=$({ids} | xargs -r docker inspect -f '{{{{.State.Health.Status}}}}' | sort -u); "
        f'[ "$states" = healthy ] && exit 0; sleep 1; done; '
        f'echo "services {" ".join(services)} not healthy after 90s: $states" >&2; exit 1)'
    )


def validate(release: Release) -> str:
    """Compose accepts both of the release's projects, and nginx -t its site (in a throwaway nginx container)."""
    settings = release.settings
    nginx_check = (
        f"docker run --rm --pull never --add-host api-{release.slug}:127.0.0.1 "
        f"-v {sh(release.directory + '/nginx')}:/etc/nginx/conf.d:ro "
        f"-v {sh(settings.paths.certs)}:/etc/appliance/certs:ro "
        f"{sh(settings.images.nginx)} nginx -t -q"
    )
    return " && ".join([release.compose("config", "-q"), release.compose("config", "-q", api=True), nginx_check])


def stack_up(release: Release, services: tuple[str, ...] = ()) -> str:
    """`services` of the stack's project (default: every one but nginx, switch_traffic's) with the release's
    settings, the monitoring folder seeded first; then stack_settled."""
    every = f"$({release.compose('config', '--services')} | grep -vx nginx)"
    names = sh(" ".join(services)) if services else every
    up = f"services={names} && {release.compose('up', '-d', '--remove-orphans')} $services"
    return f"{seed_monitoring(release)}{up} && {stack_settled(release)}"


def stack_settled(release: Release) -> str:
    """The API projects' shared volume there, and the databases healthy: what a deploy needs of the stack even
    when no service changes."""
    settings = release.settings
    # The API projects' shared volume belongs to the stack's project, whose services never mount it: Compose v1
    # makes every volume a project declares, v2 only those its services mount, so it is made here, labelled
    # as Compose labels its own.
    project, volume = settings.name, "artifacts"
    shared_volume = sh(
        "docker", "volume", "create", "--label", f"com.docker.compose.project={project}",
        "--label", f"com.docker.compose.volume={volume}", f"{project}_{volume}",
    )  # fmt: skip
    data = stack_data_services(settings)  # none when both are managed (TencentDB): nothing to wait for
    return f"{shared_volume} >/dev/null" + (f" && {wait_healthy(release, data)}" if data else "")


def tag_stack_image(release: Release, stack_image: str) -> str:
    """The release's API image also under the tag the stack's services run it by (render.stack_api_image)."""
    return sh("docker", "tag", api_image(release.settings, release.version), stack_image)


def seed_monitoring(release: Release) -> str:
    """shared/monitoring made, with the release's files it lacks (a first deploy), so that Prometheus, Alertmanager
    and the relay find theirs when they start; later releases' files come with the switch (publish_monitoring).
    "" when monitoring is off (the release has no monitoring/)."""
    if not release.settings.monitoring.enabled:
        return ""
    shared, source = release.settings.paths.monitoring, release.directory + "/monitoring"
    seed = "; ".join(
        f"{{ [ -e {sh(shared + '/' + name)} ] || cp -p {sh(source + '/' + name)} {sh(shared)}/; }}"
        for name in MONITORING_READERS
    )
    return f"install -d -m 755 {sh(shared)} && {{ {seed}; }} && "


def monitoring_changes(release: Release) -> str:
    """The names of the release's monitoring files that differ from (or are missing in) shared/monitoring."""
    shared, source = release.settings.paths.monitoring, release.directory + "/monitoring"
    names = " ".join(MONITORING_READERS)
    return f"for f in {names}; do cmp -s {sh(source)}/$f {sh(shared)}/$f || echo $f; done"


def publish_monitoring(release: Release, changed: list[str]) -> str:
    """The `changed` monitoring files into shared/monitoring (each renamed into place), then what reads them told:
    Prometheus and Alertmanager reload on SIGHUP (a config they refuse leaves them on the old one, saying so in
    their log); the relay, which runs notify.py, is restarted. A service not running is left alone."""
    shared, source = release.settings.paths.monitoring, release.directory + "/monitoring"
    place = " && ".join(
        f"cp -p {sh(source + '/' + name)} {sh(shared + '/.' + name + '.next')} "
        f"&& mv -f {sh(shared + '/.' + name + '.next')} {sh(shared + '/' + name)}"
        for name in changed
    )
    told = []
    for service in sorted({MONITORING_READERS[name] for name in changed}):
        signal = "docker restart -t 5" if service == "relay" else "docker kill -s HUP"
        told.append(f'{{ c={release.container(service)}; [ -z "$c" ] || {signal} "$c" >/dev/null; }}')
    return f"install -d -m 755 {sh(shared)} && {place} && " + " && ".join(told)


def pre_deploy_backup(release: Release) -> str:
    """A fresh backup before migrations change the schema, waiting for a running cron backup rather than failing."""
    return f"BACKUP_LOCK_WAIT=1800 {sh(release.settings.paths.script('backup.sh'))} --reason pre-deploy"


def migrate(release: Release) -> str:
    """The release's migrations, in a one-off API container; as the migration role when a managed database has
    one (database.migration_user), its URL handed over from the release's folder, never through api.env."""
    command = ("api", "python3", "-m", "service.migrate")
    database = release.settings.database
    if database is None or not database.migration_user:
        return release.compose("run", "--rm", "--no-deps", *command, api=True)
    url_file = sh(f"{release.directory}/{MIGRATION_URL_FILE}")
    run = release.compose("run", "--rm", "--no-deps", "-e", "MIGRATION_DATABASE_URL", *command, api=True)
    # A plain assignment fails when the file cannot be read (an `export X=$(...)` would not); -e NAME passes it on.
    return f'MIGRATION_DATABASE_URL="$(cat {url_file})" && export MIGRATION_DATABASE_URL && {run}'


def health_gate(release: Release, checks: int) -> str:
    """Succeeds after `checks` consecutive 200s from the API's own /api/health, `deploy.health_interval` apart,
    within `service.health_timeout`. docker exec, not Compose's: each check then costs a Python start, not two."""
    interval = release.settings.deploy.health_interval
    timeout = release.settings.service.health_timeout
    probe = f"import urllib.request as u; u.urlopen('{HEALTH_URL}', timeout=3)"
    check = f'docker exec "$c" python3 -c {sh(probe)}'
    # Loops run in a subshell: their own `exit` must not skip what an `&&` before them guards.
    return (
        f"(c={release.container('api', api=True)}; ok=0; for i in $(seq {int(timeout / interval)}); do "
        f"if {check} >/dev/null 2>&1; then ok=$((ok + 1)); [ $ok -ge {checks} ] && exit 0; else ok=0; fi; "
        f"sleep {interval}; done; echo 'no {checks} healthy answers in a row within {timeout}s' >&2; exit 1)"
    )


def health_answer(release: Release) -> str:
    """The API's /api/health answer from inside its container (whatever its status code)."""
    probe = (
        "import urllib.request as u, urllib.error as e\n"
        f"try:\n  print(u.urlopen('{HEALTH_URL}', timeout=3).read().decode())\n"
        "except e.HTTPError as x:\n  print(x.read().decode())\n"
        "except Exception as x:\n  print(repr(x))"
    )
    return release.compose("exec", "-T", "api", "python3", "-c", probe, api=True)


def api_log_tail(release: Release) -> str:
    return release.compose("logs", "--no-color", "--tail", "20", "api", api=True)


def remove_api(release: Release) -> str:
    """The release's API stopped and removed at once (one that failed its gate never took traffic)."""
    return release.compose("rm", "-s", "-f", api=True)


def switch_traffic(release: Release) -> str:
    """Point nginx at the release: its site and upstream files swapped into the folder nginx reads, nginx up
    (the first time) and checked; then a graceful reload. A config nginx refuses is swapped back."""
    shared = release.settings.paths.nginx
    keep = "; ".join(
        f"cp -p {sh(shared + '/' + name)} {sh(shared + '/' + name + '.previous')} 2>/dev/null || true"
        for name in NGINX_FILES
    )
    place = " && ".join(
        f"cp {sh(release.directory + '/nginx/' + name)} {sh(shared + '/' + name + '.next')} "
        f"&& mv {sh(shared + '/' + name + '.next')} {sh(shared + '/' + name)}"
        for name in NGINX_FILES
    )
    restore = "; ".join(f"mv {sh(shared + '/' + name + '.previous')} {sh(shared + '/' + name)}" for name in NGINX_FILES)
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


def release_stack(release: Release, services: tuple[str, ...] = ()) -> str:
    """`services` (default: every one) of the release's stack as the release defines it: what a rollback restores
    (the relay and the stand-ins run the release's image)."""
    return release.compose("up", "-d", "--remove-orphans", *services)


STACK_HASHES = "stack.hashes"  # in a release's folder: its defined_hashes, keyed by what they were computed from
STACK_INPUTS = "docker-compose.yml *.env"  # the release's files the stack's definition is made of


def defined_hashes(release: Release) -> str:
    """`SERVICE HASH` lines: Compose's hash of each stack service's definition in the release (image, mounts,
    settings), the value it labels a container with (com.docker.compose.config-hash) when it creates one."""
    return release.compose("config", "--hash=*")


def stack_inputs_key(release: Release) -> str:
    """A digest of the release's stack files (its Compose file and env files), printed: what keys its saved hashes."""
    return f"(cd {sh(release.directory)} && cat {STACK_INPUTS} 2>/dev/null | sha256sum | cut -c1-64)"


def saved_or_defined_hashes(release: Release) -> str:
    """defined_hashes as saved by the release's deploy (save_hashes), when its stack files are still the ones they
    were computed from; else Compose's own answer. A Compose v1 `config` costs ~0.5 s: a rollback saves it. The
    images are named by tags that do not move (the API's content tag) or that a deploy's stack-up follows."""
    saved = sh(f"{release.directory}/{STACK_HASHES}")
    fresh = f'[ "$(head -n 1 {saved} 2>/dev/null)" = "$( {stack_inputs_key(release)} )" ] && tail -n +2 {saved}'
    return f"{{ {fresh}; }} || {{ {defined_hashes(release)}; }}"


def save_hashes(release: Release, defined: str) -> str:
    """defined_hashes' answer `defined` kept in the release's folder, under the key of its stack files now."""
    saved = sh(f"{release.directory}/{STACK_HASHES}")
    return f"{{ {stack_inputs_key(release)}; printf '%s\\n' {sh(defined.strip())}; }} > {saved}"


def running_hashes(release: Release) -> str:
    """`SERVICE HASH` lines: the definition hash of each running container of the stack's project (one-off
    containers, such as a restore's, left out)."""
    project = f"label=com.docker.compose.project={release.project()}"
    line = '{{.Label "com.docker.compose.service"}} {{.Label "com.docker.compose.config-hash"}}'
    return f"docker ps {sh('--filter', project, '--filter', 'label=com.docker.compose.oneoff=False', '--format', line)}"


def stack_changes(defined: str, running: str) -> list[str]:
    """The stack's services whose running container is not what the release defines (or none runs), and the
    running ones it no longer defines; [] when `compose up` would change nothing."""
    wanted, found = _hash_lines(defined), _hash_lines(running)
    return sorted(name for name in wanted.keys() | found.keys() if wanted.get(name) != found.get(name))


def defined_services(defined: str) -> set[str]:
    """The services named in defined_hashes' answer."""
    return set(_hash_lines(defined))


def _hash_lines(text: str) -> dict[str, str]:
    pairs = (line.split() for line in text.splitlines())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


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
    root = release.settings.paths.www
    kept = release.settings.paths.releases
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
    paths = release.settings.paths
    link = (
        f"ln -sfn {sh(release.directory)} {sh(paths.current + '.next')} && mv -T {sh(paths.current + '.next')} "
        f"{sh(paths.current)}"
    )
    return f"{link} && echo {sh(release.version)} >> {sh(paths.history)}"


def drain(release: Release) -> str:
    """Stop the release's API with its grace period (in-flight requests finish, discussions are handed over)."""
    grace = str(release.settings.service.graceful_timeout + 5)
    return release.compose("stop", "-t", grace, api=True) + " && " + release.compose("rm", "-f", api=True)


def kept_on_host(release: Release) -> str:
    """Succeeds when the release's folder and its API image are still on the host (what a rollback needs)."""
    image = api_image(release.settings, release.version)
    return f"test -f {sh(release.directory + '/api.yml')} && docker image inspect {sh(image)} >/dev/null"
