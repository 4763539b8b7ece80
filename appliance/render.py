"""The one module that turns templates (compose/, nginx/, systemd/, monitoring/) into host files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2

from appliance.config import Config, Settings
from appliance.errors import ApplianceError
from appliance.secrets import GENERATED, MASK, Secrets

BUNDLE_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_FOLDERS = ("compose", "nginx", "systemd")

# Secrets the stack's env files carry: generated ones plus the LLM key pool.
STACK_SECRETS = (*GENERATED, "AI_API_KEY")


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


def stack_context(config: Config, secrets: Secrets, version: str, reveal: bool, memory_mb: int) -> dict[str, Any]:
    """Everything the templates may use; secrets masked unless `reveal`."""
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
        "timezone": settings.timezone,
        "server_name": settings.domain or "_",
        "images": settings.images,
        "api_image": api_image(settings, version),
        "service": settings.service,
        "backup": settings.backup,
        "limits": stack_limits(memory_mb),
        "secrets": _MissingSecrets(values),
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
) -> list[HostFile]:
    """The files of one release: compose file, env files (0600), nginx config."""
    context = stack_context(config, secrets, version, reveal, memory_mb)
    settings = config.settings
    release = f"{settings.base_dir}/releases/{version}"
    return [
        HostFile(f"{release}/docker-compose.yml", render_template("compose/docker-compose.yml.j2", context), 0o644),
        HostFile(f"{release}/api.env", render_template("compose/api.env.j2", context), 0o600),
        HostFile(f"{release}/postgres.env", render_template("compose/postgres.env.j2", context), 0o600),
        HostFile(f"{release}/redis.env", render_template("compose/redis.env.j2", context), 0o600),
        HostFile(f"{release}/nginx/appliance.conf", render_template("nginx/appliance.conf.j2", context), 0o644),
        HostFile(f"{release}/api.yml", render_template("compose/api.yml.j2", context), 0o644),
        HostFile(f"{release}/nginx/upstream.inc", render_template("nginx/upstream.conf.j2", context), 0o644),
    ]


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
