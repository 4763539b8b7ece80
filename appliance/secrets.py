"""Secrets: from the environment or a 0600 secrets.env, never from the TOML, never printed.

Generated secrets (database and Redis passwords, the JWT secret) are created once, appended to the
secrets file and kept: regenerating them would lock the service out of its own data.
"""

from __future__ import annotations

import os
import re
import secrets as random_source
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ConfigError

MASK = "******"

GENERATED = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "JWT_SECRET")
# The COS API key, for backups and for uploads in COS.
COS_SECRETS = ("COS_SECRET_ID", "COS_SECRET_KEY")
# An administrator's COS key, for inv cos.setup on the operator's machine only (never sent to a host).
COS_ADMIN_SECRETS = ("COS_ADMIN_SECRET_ID", "COS_ADMIN_SECRET_KEY")
# Managed data services (config `database`, `redis`): the app role's, the migration role's, Redis's password.
MANAGED_DATA_SECRETS = ("DATABASE_PASSWORD", "DATABASE_MIGRATION_PASSWORD", "MANAGED_REDIS_PASSWORD")
PROVIDED = (
    "AI_API_KEY",  # a comma-separated pool of LLM API keys
    *COS_SECRETS,
    *MANAGED_DATA_SECRETS,
    *COS_ADMIN_SECRETS,
    "REGISTRY_PASSWORD",
    "WECOM_WEBHOOK_URL",
    "SMTP_PASSWORD",
    "METRICS_PASSWORD",  # basic auth of /metrics for an external Prometheus (monitoring.metrics_allow_from)
)
KNOWN = GENERATED + PROVIDED
_LINE = re.compile(r"^\s*(?:export\s+)?([A-Z][A-Z0-9_]*)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class Secret:
    """A secret value that prints as a mask; `reveal()` is the only way to the value."""

    _value: str

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"


@dataclass(frozen=True)
class Secrets:
    """The secrets a config can use, by name."""

    values: Mapping[str, Secret]
    source: Path

    def get(self, name: str) -> Secret | None:
        return self.values.get(name)

    def require(self, names: Iterable[str]) -> dict[str, Secret]:
        """The named secrets, or one error naming every missing one and where to put it."""
        missing = [name for name in names if not self.values.get(name)]
        if missing:
            raise ConfigError(
                f"{self.source}: missing secret(s) {', '.join(missing)}: "
                "set them in that file (mode 0600) or in the environment"
            )
        return {name: self.values[name] for name in names}

    def redact(self, text: str) -> str:
        """`text` with every secret value (and each key of a key pool) replaced by the mask."""
        fragments = {part for secret in self.values.values() for part in _fragments(secret.reveal())}
        for fragment in sorted(fragments, key=len, reverse=True):
            text = text.replace(fragment, MASK)
        return text


def _fragments(value: str) -> list[str]:
    # Short values would mask innocent text; every real secret here is long.
    parts = [value, *value.split(",")]
    return [part.strip() for part in parts if len(part.strip()) >= 6]


def load_secrets(path: Path, environ: Mapping[str, str] | None = None) -> Secrets:
    """Secrets from `path` (if it exists; refused unless private), overridden by the environment."""
    environ = os.environ if environ is None else environ
    values = parse_secrets_file(path) if path.exists() else {}
    values.update({name: environ[name] for name in KNOWN if environ.get(name)})
    return Secrets({name: Secret(value) for name, value in values.items()}, path)


def parse_secrets_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a private secrets file; comments and blank lines ignored."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path}: mode {mode:04o} lets other users read secrets: run chmod 600 {path}")
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise ConfigError(f"{path}:{number}: expected NAME=value")
        name, raw = match.groups()
        if name not in KNOWN:
            raise ConfigError(f"{path}:{number}: unknown secret {name} (known: {', '.join(KNOWN)})")
        values[name] = _unquote(raw)
    return values


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def ensure_generated(path: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """Append any missing generated secret to `path` (created 0600); return the names created."""
    current = load_secrets(path, environ)
    missing = [name for name in GENERATED if not current.get(name)]
    if not missing:
        return []
    lines = "".join(f"{name}={random_source.token_urlsafe(32)}\n" for name in missing)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
        if handle.tell() and not path.read_text(encoding="utf-8").endswith("\n"):
            handle.write("\n")
        handle.write(lines)
    return missing
