"""The one module that turns templates (compose/, nginx/, systemd/, monitoring/) into host files."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jinja2

from appliance import notify
from appliance.certificates import CertificateProblem, parse_bundle
from appliance.config import Config, Settings
from appliance.errors import ApplianceError, ConfigError
from appliance.secrets import COS_SECRETS, GENERATED, MANAGED_DATA_SECRETS, MASK, Secret, Secrets

BUNDLE_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_FOLDERS = ("compose", "nginx", "systemd", "monitoring")

# nginx's name on the stack's internal network, where it reaches the API: the API believes X-Real-IP from it.
NGINX_INTERNAL_ALIAS = "nginx-internal"
# Secrets the stack's env files carry: generated ones, the LLM key pool, the COS key, managed data's passwords.
STACK_SECRETS = (*GENERATED, "AI_API_KEY", *COS_SECRETS, *MANAGED_DATA_SECRETS)
# Managed data services' CA certificates: in the release's folder on the host, mounted there in the API container.
DATA_CA_FOLDER = "data-ca"
DATA_CA_IN_CONTAINER = "/etc/appliance/data-ca"
POSTGRES_CA, REDIS_CA = "postgres-ca.pem", "redis-ca.pem"
# The migration role's DATABASE_URL (database.migration_user), kept out of api.env: only migrations read it.
MIGRATION_URL_FILE = "migration.url"
# The API image's tags that name its content (stack_api_image), next to the releases' own `api:VERSION` tags.
CONTENT_TAG_PREFIX = "id-"
# Where the stack's services read shared/monitoring (HostPaths.monitoring), the whole folder mounted read-only.
MONITORING_IN_CONTAINER = "/etc/appliance/monitoring"
# Where the monitoring host's Prometheus finds the private CA's certificate (tls.mode "self-signed"), to check the
# other hosts' sites with.
SITE_CA_IN_CONTAINER = "/etc/appliance/site-ca.pem"
# Where nginx's container sees HostPaths.nginx (the compose file mounts that folder as conf.d).
NGINX_CONF_IN_CONTAINER = "/etc/nginx/conf.d"
# The status of the site's health answer while the host is drained (appliance/drain.py): what tells it from a sick
# API's 503.
DRAIN_STATUS = "draining"


@dataclass(frozen=True)
class HostFile:
    """A file as it lands on the host: absolute path, text, mode."""

    path: str
    content: str
    mode: int


@dataclass(frozen=True)
class StackLimits:
    """Memory limits of the stack's containers, sized from the host's memory."""

    api_memory: str
    postgres_memory: str
    redis_memory: str
    redis_maxmemory: str


def stack_limits(memory_mb: int) -> StackLimits:
    """Share a host's memory: a quarter each to Postgres and the API (two API copies run during a
    deploy), an eighth to Redis, the rest to nginx, the OS and the page cache."""
    quarter, eighth = memory_mb // 4, memory_mb // 8
    return StackLimits(f"{quarter}m", f"{quarter}m", f"{eighth}m", f"{eighth * 3 // 4}mb")


def _environment() -> jinja2.Environment:
    missing = [folder for folder in TEMPLATE_FOLDERS if not (BUNDLE_ROOT / folder).is_dir()]
    if missing:
        raise ApplianceError(
            f"{BUNDLE_ROOT}: template folders missing ({', '.join(missing)}): run from a full checkout"
        )
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(BUNDLE_ROOT)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - config files, not HTML
    )


def render_template(name: str, context: dict[str, Any]) -> str:
    """One template, e.g. "nginx/appliance.conf.j2", rendered with `context`."""
    try:
        return _environment().get_template(name).render(context)
    except jinja2.TemplateError as exc:
        raise ApplianceError(f"{name}: cannot render: {exc}") from None


HOST_HEADER = "Managed by cvm-appliance (inv bootstrap); changes made on the host are overwritten."


def render_host_template(template: str, **context: Any) -> bytes:
    """A host configuration template from systemd/host/, with the managed-file header."""
    return render_template(f"systemd/host/{template}", {"header": HOST_HEADER, **context}).encode()


def release_slug(version: str) -> str:
    """A version as it may appear in Compose project and host names: lower-case letters, digits, '-'."""
    slug = re.sub(r"[^a-z0-9]+", "-", version.lower()).strip("-")
    if not slug:
        raise ApplianceError(f"release version {version!r} has no letters or digits")
    return slug


def site_origin(config: Config) -> str:
    """The origin browsers see for the appliance, which the API must accept for WebSockets."""
    settings = config.settings
    return settings.public_url or f"https://{settings.domain or settings.hosts[0].address}"


def api_image(settings: Settings, version: str) -> str:
    """The API image of a release as the host knows it: REPOSITORY:VERSION, the registry in front for that transport."""
    images = settings.images
    repository = f"{images.registry}/{images.api}" if images.transport == "registry" and images.registry else images.api
    return f"{repository}:{version}"


def stack_api_image(settings: Settings, version: str, image_id: str) -> str:
    """The API image as the stack's long-lived services that run it (the relay, the LLM stand-in) name it: a tag
    derived from the image's content (`id-` and its short ID), so a release with the same image, a same-commit
    redeploy or a rollback between two such releases, changes nothing Compose would recreate. Without an ID (check
    mode before the build), the release's own tag."""
    if not image_id:
        return api_image(settings, version)
    return api_image(settings, CONTENT_TAG_PREFIX + image_id.removeprefix("sha256:")[:12])


@dataclass(frozen=True)
class ArtifactCos:
    """The bucket uploads go to, as the service's COS_* settings (service/settings.py) name it."""

    bucket: str
    region: str
    scheme: str
    domain: str | None  # the SDK's Domain: the host of every request; None: <bucket>.cos.<region>.myqcloud.com


def artifact_cos(settings: Settings) -> ArtifactCos | None:
    """Where uploads go with artifact_storage "cos" (None: the local volume); region and endpoint default to
    the backup's. An endpoint means what it means to the backups (appliance/backup/cos.py): http(s)://ADDRESS:PORT
    is a server reached by address, a name is the COS endpoint domain the bucket's host is under."""
    service = settings.service
    if service.artifact_storage != "cos":
        return None
    bucket = service.artifact_cos_bucket or ""  # the config requires one for "cos"
    region = service.artifact_cos_region or settings.backup.cos_region
    endpoint = service.artifact_cos_endpoint or settings.backup.cos_endpoint
    if endpoint and "://" in endpoint:
        url = urlsplit(endpoint)
        return ArtifactCos(bucket, region, url.scheme, url.netloc)
    # The SDK sends a Domain verbatim, without the bucket in front as it does for an Endpoint.
    return ArtifactCos(bucket, region, "https", f"{bucket}.{endpoint}" if endpoint else None)


def check_artifact_key(config: Config, secrets: Secrets) -> None:
    """Refuse, in one line, a config whose uploads go to COS without the COS key to sign them with."""
    missing = [name for name in COS_SECRETS if not secrets.get(name)]
    if config.settings.service.artifact_storage == "cos" and missing:
        raise ConfigError(
            f'{secrets.source}: service.artifact_storage is "cos": set {" and ".join(missing)} '
            "(a COS API key with object access to artifact_cos_bucket) in that file (mode 0600) or in the environment"
        )


def data_ca_files(config: Config, release: str) -> list[HostFile]:
    """The managed data services' CA certificates (0644) for the release's folder; a missing file, one that holds no
    certificate or one that holds a private key is a ConfigError naming the setting and the file."""
    settings = config.settings
    wanted = [
        (setting, name, ca_file)
        for setting, name, ca_file in (
            ("database.ca_file", POSTGRES_CA, settings.database.ca_file if settings.database else None),
            ("redis.ca_file", REDIS_CA, settings.redis.ca_file if settings.redis else None),
        )
        if ca_file
    ]
    files = []
    for setting, name, ca_file in wanted:
        path = config.resolve(ca_file)
        if not path.is_file():
            raise ConfigError(
                f"{config.path}: {setting}: {path} not found: download the CA certificate from the console"
            )
        text = path.read_text(encoding="utf-8", errors="replace")
        if "PRIVATE KEY" in text:
            raise ConfigError(f"{config.path}: {setting}: {path} holds a private key: give the CA certificate alone")
        try:
            parse_bundle(text.encode())
        except CertificateProblem as exc:
            raise ConfigError(f"{config.path}: {setting}: {path}: {exc}: give the CA certificate (PEM)") from None
        files.append(HostFile(f"{release}/{DATA_CA_FOLDER}/{name}", text, 0o644))
    return files


def _password(secrets: Secrets, name: str, reveal: bool) -> str:
    secret: Secret | None = secrets.get(name)
    if secret is None or not secret.reveal():
        if reveal:
            raise ConfigError(
                f"{secrets.source}: the managed data services need the {name} secret: set it in that file"
            )
        return f"<{name} not set>"
    return quote(secret.reveal(), safe="") if reveal else MASK


def managed_database_url(settings: Settings, secrets: Secrets, reveal: bool, migration: bool = False) -> str | None:
    """DATABASE_URL for a managed database (None: the stack's container): the password URL-quoted, the sslmode,
    and the CA as mounted in the API container; with `migration`, the migration role's (None without one)."""
    database = settings.database
    if database is None or (migration and not database.migration_user):
        return None
    user, secret = (
        (database.migration_user, "DATABASE_MIGRATION_PASSWORD") if migration else (database.user, "DATABASE_PASSWORD")
    )
    query = {"sslmode": database.sslmode}
    if database.ca_file:
        query["sslrootcert"] = f"{DATA_CA_IN_CONTAINER}/{POSTGRES_CA}"
    credentials = f"{quote(user or '', safe='')}:{_password(secrets, secret, reveal)}"
    where = f"{database.host}:{database.port}/{quote(database.name, safe='')}"
    return f"postgresql://{credentials}@{where}?{urlencode(query, safe='/')}"


def managed_redis_url(settings: Settings, secrets: Secrets, reveal: bool) -> str | None:
    """REDIS_URL for a managed Redis (None: the stack's container): rediss://, the certificate and its host name
    checked against the CA as mounted in the API container (redis-py's own URL options)."""
    managed = settings.redis
    if managed is None:
        return None
    query = {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": f"{DATA_CA_IN_CONTAINER}/{REDIS_CA}",
        "ssl_check_hostname": "true",
    }
    password = _password(secrets, "MANAGED_REDIS_PASSWORD", reveal)
    return f"rediss://:{password}@{managed.host}:{managed.port}/0?{urlencode(query, safe='/')}"


def stack_data_services(settings: Settings) -> tuple[str, ...]:
    """The data services the stack runs itself: postgres and redis, but those a managed one replaces."""
    return tuple(name for name, managed in (("postgres", settings.database), ("redis", settings.redis)) if not managed)


def drain_flag_in_nginx(settings: Settings) -> str | None:
    """The drain flag (HostPaths.drain_flag) as nginx's container sees it, for the site's health check; None with one
    app host, whose site then has no drain check: a load balancer would have no other host to send traffic to."""
    if len(settings.hosts) < 2:
        return None
    return f"{NGINX_CONF_IN_CONTAINER}/{PurePosixPath(settings.paths.drain_flag).name}"


@dataclass(frozen=True)
class ScrapedHost:
    """Another app host as the monitoring host's Prometheus reaches it: through its nginx on the VPC address, its
    certificate checked for the name the host's site certificate carries."""

    label: str
    address: str  # the VPC address (Host.vpc_address)
    server_name: str


@dataclass(frozen=True)
class HostsMonitoring:
    """One Prometheus for several app hosts (docs/monitoring.md, "Several hosts"): it runs on the first configured
    host, which scrapes the others; every other host runs only its node exporter and lets that host (and
    monitoring.metrics_allow_from) read its /metrics and /metrics/node, with METRICS_PASSWORD."""

    here: str | None  # this host's label for the samples' `host` label; None with one host (files as before)
    runs_prometheus: bool
    peers: tuple[ScrapedHost, ...]  # what this host's Prometheus scrapes besides its own stack
    metrics_allow: tuple[str, ...]  # who nginx lets read /metrics: metrics_allow_from, and the monitoring host


def hosts_monitoring(config: Config) -> HostsMonitoring:
    """How monitoring spans the environment's app hosts, seen from the one this config acts on (settings.hosts[0])."""
    settings = config.settings
    allow = tuple(settings.monitoring.metrics_allow_from)
    if len(settings.hosts) < 2 or not settings.monitoring.enabled:
        return HostsMonitoring(None, True, (), allow)
    here, first, *others = settings.hosts[0], *config.configured_hosts
    if here.label == first.label:
        peers = tuple(ScrapedHost(host.label, host.vpc_address, settings.domain or host.address) for host in others)
        return HostsMonitoring(here.label, True, peers, allow)
    return HostsMonitoring(here.label, False, (), (*allow, first.vpc_address))


def monitoring_services(config: Config) -> tuple[str, ...]:
    """The monitoring services this host's stack runs (none when monitoring is off): the node exporter on every app
    host; Prometheus, Alertmanager and their relay only on the one that runs Prometheus (hosts_monitoring)."""
    if not config.settings.monitoring.enabled:
        return ()
    central = ("prometheus", "alertmanager", "relay") if hosts_monitoring(config).runs_prometheus else ()
    return (*central, "node-exporter")


def stack_images(config: Config) -> dict[str, str]:
    """The images this host's stack needs, by service: its data services' (data_images), nginx's, and its monitoring
    services'. The API's image is the release's; the relay and the LLM stand-in run that one too."""
    images = config.settings.images
    monitoring = {
        "prometheus": images.prometheus,
        "alertmanager": images.alertmanager,
        "node-exporter": images.node_exporter,
    }
    wanted = {name: monitoring[name] for name in monitoring_services(config) if name in monitoring}
    return {**data_images(config.settings), "nginx": images.nginx, **wanted}


def data_images(settings: Settings) -> dict[str, str]:
    """The data images a host needs, by service: those the stack runs, and postgres's as the dump and drill tool
    of a managed database that the appliance backs up (appliance/backup/dump.py)."""
    needed = set(stack_data_services(settings)) | (
        {"postgres"} if settings.database and settings.backup.enabled else set()
    )
    return {name: getattr(settings.images, name) for name in ("postgres", "redis") if name in needed}


def stack_context(
    config: Config, secrets: Secrets, version: str, reveal: bool, memory_mb: int, image_id: str = ""
) -> dict[str, Any]:
    """Everything the templates may use; secrets masked unless `reveal`. `image_id`: the API image's ID, when known."""
    settings = config.settings
    values = {name: (secret.reveal() if reveal else MASK) for name in STACK_SECRETS if (secret := secrets.get(name))}
    return {
        "header": f"Rendered by cvm-appliance for {settings.name} ({config.env}), release {version}. "
        "Changes on the host are overwritten.",
        "name": settings.name,
        "env": config.env,
        "version": version,
        "slug": release_slug(version),
        "graceful_timeout": settings.service.graceful_timeout,
        "origins": [site_origin(config), *settings.service.cors_origins],
        "base_dir": settings.base_dir,
        "nginx_alias": NGINX_INTERNAL_ALIAS,
        "timezone": settings.timezone,
        "server_name": settings.domain or "_",
        "images": settings.images,
        "api_image": api_image(settings, version),
        "stack_api_image": stack_api_image(settings, version, image_id),
        "monitoring_dir": settings.paths.monitoring,
        "monitoring_in_container": MONITORING_IN_CONTAINER,
        "service": settings.service,
        "artifact_cos": artifact_cos(settings),
        "nginx": settings.nginx,
        "frontend": settings.frontend,
        "backup": settings.backup,
        "wal_spool": settings.paths.wal_spool,
        "monitoring": settings.monitoring,
        # Backups count as stale after twice the longest gap between two runs of their schedule.
        "backup_max_age": 2 * cron_max_gap(settings.backup.schedule),
        "limits": stack_limits(memory_mb),
        "secrets": _MissingSecrets(values),
        "managed_database": settings.database,
        "managed_redis": settings.redis,
        "database_url": managed_database_url(settings, secrets, reveal),
        "redis_url": managed_redis_url(settings, secrets, reveal),
        "data_ca": (DATA_CA_FOLDER, DATA_CA_IN_CONTAINER) if settings.database or settings.redis else None,
        "hosts_monitoring": hosts_monitoring(config),
        "monitoring_services": monitoring_services(config),
        "metrics_password": _metrics_password(config, secrets, reveal) if hosts_monitoring(config).peers else "",
        "site_ca_in_container": SITE_CA_IN_CONTAINER,
        "tls": settings.tls,
        "drain_flag": drain_flag_in_nginx(settings),
        "drain_status": DRAIN_STATUS,
    }


class _MissingSecrets(dict[str, str]):
    """Secrets for templates: a secret that is not set renders as an explicit marker, not a blank."""

    def __missing__(self, key: str) -> str:
        return f"<{key} not set>"


def release_files(
    config: Config,
    secrets: Secrets,
    version: str,
    reveal: bool = False,
    memory_mb: int = 4096,
    image_id: str = "",
) -> list[HostFile]:
    """The files of one release: compose file, env files (0600), nginx config. `image_id`: the API image's ID."""
    context = stack_context(config, secrets, version, reveal, memory_mb, image_id)
    settings = config.settings
    release = settings.paths.release(version)
    migration_url = managed_database_url(settings, secrets, reveal, migration=True)
    return [
        HostFile(f"{release}/docker-compose.yml", render_template("compose/docker-compose.yml.j2", context), 0o644),
        HostFile(f"{release}/api.env", render_template("compose/api.env.j2", context), 0o600),
        *data_ca_files(config, release),
        *([HostFile(f"{release}/{MIGRATION_URL_FILE}", migration_url + "\n", 0o600)] if migration_url else []),
        *(
            HostFile(f"{release}/{service}.env", render_template(f"compose/{service}.env.j2", context), 0o600)
            for service in stack_data_services(settings)  # the stack's own containers, with their passwords
        ),
        HostFile(f"{release}/nginx/appliance.conf", render_template("nginx/appliance.conf.j2", context), 0o644),
        HostFile(f"{release}/api.yml", render_template("compose/api.yml.j2", context), 0o644),
        HostFile(f"{release}/nginx/upstream.inc", render_template("nginx/upstream.conf.j2", context), 0o644),
        HostFile(f"{release}/nginx/metrics.htpasswd", metrics_htpasswd(config, secrets, reveal), 0o644),
        *(monitoring_files(config, secrets, release, context, reveal) if settings.monitoring.enabled else []),
    ]


def monitoring_files(
    config: Config, secrets: Secrets, release: str, context: dict[str, Any], reveal: bool
) -> list[HostFile]:
    """Prometheus's config and rules, Alertmanager's routing, and the relay: its code and its channels."""
    folder = f"{release}/monitoring"
    env = notify.channels_for(config.settings, secrets).to_env()
    secret_keys = ("WECOM_WEBHOOK_URL", "SMTP_PASSWORD")
    lines = [f"# {context['header']}"]
    lines += [f"{key}={MASK if key in secret_keys and value and not reveal else value}" for key, value in env.items()]
    return [
        HostFile(f"{folder}/prometheus.yml", render_template("monitoring/prometheus.yml.j2", context), 0o644),
        HostFile(f"{folder}/alerts.yml", render_template("monitoring/alerts.yml.j2", context), 0o644),
        HostFile(f"{folder}/alertmanager.yml", render_template("monitoring/alertmanager.yml.j2", context), 0o644),
        # The relay runs this very module (stdlib only), so alerts and deploy notices read alike.
        HostFile(f"{folder}/notify.py", Path(notify.__file__).read_text(encoding="utf-8"), 0o644),
        HostFile(f"{release}/relay.env", "\n".join(lines) + "\n", 0o600),
    ]


def _metrics_password(config: Config, secrets: Secrets, reveal: bool) -> str:
    """METRICS_PASSWORD (masked unless `reveal`); one line naming why it is needed when it is not set."""
    password = secrets.get("METRICS_PASSWORD")
    if password is None or not password.reveal():
        why = (
            "monitoring.metrics_allow_from"
            if config.settings.monitoring.metrics_allow_from
            else "monitoring with several [[hosts]] (the first host's Prometheus reads the others' /metrics)"
        )
        raise ConfigError(f"{config.path}: {why} needs the METRICS_PASSWORD secret in {secrets.source}")
    return password.reveal() if reveal else MASK


def metrics_htpasswd(config: Config, secrets: Secrets, reveal: bool) -> str:
    """nginx's user file for /metrics (user "metrics", salted SHA-1 as nginx's {SSHA} scheme reads it)."""
    if not hosts_monitoring(config).metrics_allow:
        return "# /metrics is not served: monitoring.metrics_allow_from is empty\n"
    password = _metrics_password(config, secrets, reveal)
    if not reveal:
        return f"metrics:{MASK}\n"
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # noqa: S324 - the scheme nginx reads
    return f"metrics:{{SSHA}}{base64.b64encode(digest + salt).decode()}\n"


def cron_max_gap(schedule: str) -> int:
    """The longest time, in seconds, between two consecutive runs of a 5-field cron schedule."""
    fields = schedule.split()
    bounds = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
    minute, hour, day, month, weekday = (
        _cron_field(text, low, high) for text, (low, high) in zip(fields, bounds, strict=True)
    )
    weekday = {value % 7 for value in weekday}  # 7 is Sunday too
    both_days_restricted = fields[2] != "*" and fields[4] != "*"
    runs: list[datetime] = []
    start = datetime(2024, 1, 1)  # two years from here hold every month length and a leap day
    for offset in range(731):
        date = start + timedelta(days=offset)
        day_ok, weekday_ok = date.day in day, (date.weekday() + 1) % 7 in weekday
        # cron: when both day fields are restricted, either one matching is enough.
        if date.month in month and ((day_ok or weekday_ok) if both_days_restricted else (day_ok and weekday_ok)):
            runs += [date.replace(hour=h, minute=m) for h in sorted(hour) for m in sorted(minute)]
    if len(runs) < 2:
        raise ApplianceError(f"backup.schedule {schedule!r} runs less than twice in two years")
    return int(max((later - earlier).total_seconds() for earlier, later in itertools.pairwise(runs)))


def _cron_field(text: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        span, _, step = part.partition("/")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            first, last = (int(bound) for bound in span.split("-", 1))
        else:
            first = last = int(span)
            if step:
                last = high
        values.update(range(first, last + 1, int(step or 1)))
    return values


def write_tree(files: list[HostFile], out: Path) -> list[Path]:
    """Write host files under `out`, mirroring their absolute host paths; return what was written."""
    written = []
    for host_file in files:
        target = out / PurePosixPath(host_file.path).relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(host_file.content, encoding="utf-8")
        target.chmod(host_file.mode)
        written.append(target)
    return written
