"""Service settings, read once from environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.client_address import parse_trusted

REGISTRATION_MODES = ("open", "invite", "closed")
# LLM tokens a day (since local midnight): per user, and for the whole service.
DEFAULT_DAILY_TOKEN_QUOTA = 500_000
DEFAULT_DAILY_TOKEN_CEILING = 5_000_000


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    redis_key_prefix: str
    ai_model_name: str
    ai_model_base_url: str
    ai_api_keys: tuple[str, ...]
    ai_model_max_tokens: int
    max_concurrent_agents: int
    agent_timeout: float
    workflow_timeout: float
    artifact_storage_path: Path
    artifact_storage_backend: str
    cos_region: str | None
    cos_bucket: str | None
    cos_secret_id: str | None
    cos_secret_key: str | None
    cos_scheme: str
    cos_domain: str | None
    jwt_secret: str
    cors_origins: tuple[str, ...]
    access_token_ttl: int
    refresh_token_ttl: int
    discussion_lease_seconds: float
    login_max_failures_per_account: int
    login_max_attempts_per_ip: int
    login_window_seconds: int
    max_upload_bytes: int
    ws_drain_seconds: float
    # Present while the deploy keeps this API warm and idle (service/standby.py); the host creates and removes it.
    standby_file: Path
    # Proxies whose X-Real-IP names the client (addresses, networks or host names): service/client_address.py.
    trusted_proxies: tuple[str, ...]
    registration_mode: str
    daily_token_quota: int
    daily_token_ceiling: int


def _text(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = env.get(name, default)
    if value is None or not value.strip():
        raise SettingsError(f"{name} is not set; export {name}=... before starting the service")
    return value.strip()


def _number(env: Mapping[str, str], name: str, default: str, kind: type[int] | type[float]) -> int | float:
    raw = _text(env, name, default)
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a {kind.__name__}; set it to a positive number") from None
    if value <= 0:
        raise SettingsError(f"{name}={raw!r} must be greater than 0")
    return value


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...], default: str | None = None) -> str:
    value = _text(env, name, default)
    if not value.startswith(tuple(f"{s}://" for s in schemes)):
        raise SettingsError(f"{name}={value!r} must start with one of {', '.join(s + '://' for s in schemes)}")
    return value


def _csv(env: Mapping[str, str], name: str, default: str | None = None) -> tuple[str, ...]:
    items = tuple(part.strip() for part in _text(env, name, default).split(",") if part.strip())
    if not items:
        raise SettingsError(f"{name} holds no values; give a comma-separated list")
    return items


def _cos(env: Mapping[str, str], backend: str, name: str) -> str | None:
    """A COS setting: required with ARTIFACT_STORAGE_BACKEND=cos, ignored otherwise."""
    if backend != "cos":
        return None
    if not env.get(name, "").strip():
        raise SettingsError(f"{name} is not set; ARTIFACT_STORAGE_BACKEND=cos needs it")
    return env[name].strip()


def _trusted_proxies(env: Mapping[str, str]) -> tuple[str, ...]:
    entries = tuple(part.strip() for part in env.get("TRUSTED_PROXIES", "").split(",") if part.strip())
    try:
        parse_trusted(entries)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return entries


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from `env` (default: os.environ); raise SettingsError on the first bad one."""
    env = os.environ if env is None else env
    secret = _text(env, "JWT_SECRET")
    if len(secret.encode()) < 32:
        raise SettingsError("JWT_SECRET is shorter than 32 bytes; generate one with `openssl rand -hex 32`")
    backend = _text(env, "ARTIFACT_STORAGE_BACKEND", "local")
    if backend not in ("local", "cos"):
        raise SettingsError(f"ARTIFACT_STORAGE_BACKEND={backend!r} must be 'local' or 'cos'")
    # Closed unless told otherwise: an open sign-up lets anyone spend the operator's LLM money.
    registration = _text(env, "REGISTRATION_MODE", "closed")
    if registration not in REGISTRATION_MODES:
        raise SettingsError(f"REGISTRATION_MODE={registration!r} must be one of {', '.join(REGISTRATION_MODES)}")
    return Settings(
        database_url=_url(env, "DATABASE_URL", ("postgresql", "postgres")),
        redis_url=_url(env, "REDIS_URL", ("redis", "rediss", "unix")),
        redis_key_prefix=_text(env, "REDIS_KEY_PREFIX", "cvm:"),
        ai_model_name=_text(env, "AI_MODEL_NAME", "deepseek-chat"),
        ai_model_base_url=_url(env, "AI_MODEL_BASE_URL", ("http", "https")),
        ai_api_keys=_csv(env, "AI_API_KEY"),
        ai_model_max_tokens=int(_number(env, "AI_MODEL_MAX_TOKENS", "4000", int)),
        max_concurrent_agents=int(_number(env, "MAX_CONCURRENT_AGENTS", "10", int)),
        agent_timeout=float(_number(env, "AGENT_TIMEOUT", "300", float)),
        workflow_timeout=float(_number(env, "WORKFLOW_TIMEOUT", "1800", float)),
        artifact_storage_path=Path(_text(env, "ARTIFACT_STORAGE_PATH", "/var/lib/cvm-service/artifacts")),
        artifact_storage_backend=backend,
        cos_region=_cos(env, backend, "COS_REGION"),
        cos_bucket=_cos(env, backend, "COS_BUCKET"),
        cos_secret_id=_cos(env, backend, "COS_SECRET_ID"),
        cos_secret_key=_cos(env, backend, "COS_SECRET_KEY"),
        cos_scheme=_text(env, "COS_SCHEME", "https"),
        cos_domain=env.get("COS_DOMAIN", "").strip() or None,
        jwt_secret=secret,
        cors_origins=_csv(env, "CORS_ORIGINS", "http://localhost:3000"),
        access_token_ttl=int(_number(env, "ACCESS_TOKEN_TTL", "900", int)),
        refresh_token_ttl=int(_number(env, "REFRESH_TOKEN_TTL", str(30 * 86400), int)),
        discussion_lease_seconds=float(_number(env, "DISCUSSION_LEASE_SECONDS", "15", float)),
        login_max_failures_per_account=int(_number(env, "LOGIN_MAX_FAILURES_PER_ACCOUNT", "5", int)),
        login_max_attempts_per_ip=int(_number(env, "LOGIN_MAX_ATTEMPTS_PER_IP", "30", int)),
        login_window_seconds=int(_number(env, "LOGIN_WINDOW_SECONDS", "300", int)),
        max_upload_bytes=int(_number(env, "MAX_UPLOAD_BYTES", str(10 * 1024 * 1024), int)),
        ws_drain_seconds=float(_number(env, "WS_DRAIN_SECONDS", "2", float)),
        standby_file=Path(_text(env, "STANDBY_FILE", "/run/cvm-service/control/standby")),
        trusted_proxies=_trusted_proxies(env),
        registration_mode=registration,
        daily_token_quota=int(_number(env, "DAILY_TOKEN_QUOTA", str(DEFAULT_DAILY_TOKEN_QUOTA), int)),
        daily_token_ceiling=int(_number(env, "DAILY_TOKEN_CEILING", str(DEFAULT_DAILY_TOKEN_CEILING), int)),
    )
