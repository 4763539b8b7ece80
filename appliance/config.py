"""The one config model: appliance.toml, its environments, validated once before any host is touched.

Top-level tables are the defaults every environment shares; `[environments.NAME]` holds what differs
for one environment (deep-merged over the defaults). Every environment is validated, whichever one a
task uses, so a typo in staging is caught while deploying production.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from appliance.errors import ConfigError
from appliance.host_paths import DEFAULT_BASE, HostPaths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Ubuntu 22.04's python3
    import tomli as tomllib

DEFAULT_CONFIG = "appliance.toml"
CONFIG_ENV_VAR = "APPLIANCE_CONFIG"

_CRON_FIELD = r"(\*|[0-9,\-*/]+)"
_CRON = re.compile(rf"^{_CRON_FIELD}(\s+{_CRON_FIELD}){{4}}$")


_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def is_host_name(value: str) -> bool:
    """A DNS name of at least two labels (agents.example.com), lower case, not an IP address."""
    labels = value.split(".")
    if len(value) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        return False
    return not labels[-1].isdigit()  # 203.0.113.10 is an address, not a name


def is_origin(value: str) -> bool:
    """https://NAME-OR-ADDRESS[:PORT] and nothing more: no path, query, user or trailing slash."""
    match = re.fullmatch(r"https://(?P<host>\[[0-9a-f:]+\]|[^\s/:?#@\[\]]+)(:(?P<port>\d{1,5}))?", value)
    if not match or (match["port"] and not 0 < int(match["port"]) < 65536):
        return False
    host = match["host"].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return is_host_name(host) or host == "localhost"
    return True


def _networks(values: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Each address or CIDR as a network; one that is neither is an error naming it."""
    networks = []
    for cidr in values:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ValueError(f"{cidr!r} is not an address or CIDR such as 203.0.113.7/32") from None
    return networks


def _matching(pattern: str, message: str) -> AfterValidator:
    """A field's check that its whole value (when set) matches `pattern`; `message` says what it must be."""

    def check(value: str | None) -> str | None:
        if value is not None and not re.fullmatch(pattern, value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


# A COS endpoint domain, or http(s)://ADDRESS[:PORT] for a COS-compatible server reached by address.
CosEndpoint = Annotated[
    str | None,
    _matching(
        r"(https?://[^\s/:]+(:\d{1,5})?|[a-z0-9.-]+\.[a-z]{2,})",
        "must be a COS endpoint domain or http(s)://ADDRESS[:PORT]",
    ),
]
PrometheusDuration = Annotated[
    str, _matching(r"[1-9][0-9]*(ms|s|m|h|d|w|y)", "must be a Prometheus duration such as 15s, 5m or 15d")
]


class _Section(BaseModel):
    # TOML has real types: "10" for an integer is a mistake to report, not to coerce.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Host(_Section):
    """One CVM reached over SSH."""

    address: str = Field(min_length=1)
    user: str = "root"
    port: int = Field(default=22, ge=1, le=65535)
    key: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    # What reports and `--host` call this host when there are several (default: its address, :port when not 22).
    name: Annotated[
        str | None, _matching(r"[a-z0-9][a-z0-9_.-]{0,62}", "must be lower-case letters, digits, '.', '_' or '-'")
    ] = None
    # The CVM's address inside the VPC, where the other hosts reach it (one Prometheus scraping every host), when
    # `address` is a public one (an EIP) for SSH. Default: `address`.
    private_address: str | None = Field(default=None, min_length=1)

    @property
    def target(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def label(self) -> str:
        """The host's stable name in reports and for `--host NAME`."""
        return self.name or (self.address if self.port == 22 else f"{self.address}:{self.port}")

    @property
    def vpc_address(self) -> str:
        """Where the other app hosts reach this one."""
        return self.private_address or self.address

    def answers_to(self, given: str) -> bool:
        """Whether `--host given` names this host: its label, USER@LABEL or its full USER@ADDRESS:PORT."""
        return given in (self.label, f"{self.user}@{self.label}", self.target)


class Tls(_Section):
    """How nginx gets its certificate."""

    mode: Literal["self-signed", "provided", "acme"] = "self-signed"
    # mode "provided": a certificate bundle (leaf first, then its chain) and its key, e.g. the nginx download
    # of a Tencent SSL certificate (DOMAIN_bundle.crt, DOMAIN.key); paths relative to this file.
    cert_file: str | None = None
    key_file: str | None = None
    acme_email: str | None = None
    # mode "acme": the ACME server's directory URL (Let's Encrypt by default; a staging CA, or Pebble in tests),
    # and a CA bundle to trust it with when it is not publicly trusted (relative to this file).
    acme_directory: Annotated[
        str, _matching(r"https://[^\s/]+(/\S*)?", "must be an https:// URL of an ACME directory")
    ] = "https://acme-v02.api.letsencrypt.org/directory"
    acme_ca_file: str | None = None
    # mode "self-signed": the appliance's private CA lives here on the operator's machine, never on the host
    # (relative to this file; default .appliance-ca/NAME-ENV).
    ca_dir: str | None = None

    @model_validator(mode="after")
    def _mode_needs(self) -> Tls:
        if self.mode == "provided" and not (self.cert_file and self.key_file):
            raise ValueError("mode 'provided' needs cert_file and key_file")
        if self.mode == "acme" and not self.acme_email:
            raise ValueError("mode 'acme' needs acme_email")
        return self


class Images(_Section):
    """Which images run and how they reach the host."""

    # ssh: only missing layers, through the host's loopback registry; archive: whole `docker save` streams;
    # registry: TCR/CCR or any registry both sides reach (docs/deploy.md, "How images travel").
    transport: Literal["ssh", "archive", "registry"] = "ssh"
    # The host's CPU architecture: the API image and its wheels are built for it, whatever the operator runs.
    platform: Literal["linux/amd64", "linux/arm64"] = "linux/amd64"
    registry: str | None = None
    registry_user: str | None = None
    api: str = "cvm-appliance/api"
    base_image: str = "python:3.11-slim-bookworm"
    postgres: str = "postgres:16-bookworm"
    redis: str = "redis:7-bookworm"
    nginx: str = "nginx:1.27-bookworm"
    # The monitoring profile (monitoring.enabled); the WeCom/e-mail relay runs on the API image.
    prometheus: str = "prom/prometheus:v2.53.2"
    alertmanager: str = "prom/alertmanager:v0.27.0"
    node_exporter: str = "prom/node-exporter:v1.8.2"

    @model_validator(mode="after")
    def _registry_needs(self) -> Images:
        if self.transport == "registry" and not self.registry:
            raise ValueError("transport 'registry' needs registry (e.g. ccr.ccs.tencentyun.com/NAMESPACE)")
        if self.transport == "registry" and not self.registry_user:
            raise ValueError("transport 'registry' needs registry_user (its password: the REGISTRY_PASSWORD secret)")
        return self


class Service(_Section):
    """Settings of the multi-agent service; they become its environment variables."""

    model_name: str = "deepseek-chat"
    base_url: Annotated[str, _matching(r"https?://[^\s/]+.*", "must be an http:// or https:// URL")] = (
        "https://api.deepseek.com"
    )
    agent_cap: int = Field(default=10, ge=1, le=1000)
    agent_timeout: int = Field(default=300, ge=1)
    workflow_timeout: int = Field(default=1800, ge=1)
    max_tokens: int = Field(default=4000, ge=1)
    workers: int = Field(default=2, ge=1, le=64)
    # Seconds a stopping API gets to finish in-flight requests before it is killed.
    graceful_timeout: int = Field(default=30, ge=1, le=600)
    # Seconds a new API gets to pass its health gate (deploy.health_checks answers in a row) before a deploy gives up.
    health_timeout: int = Field(default=120, ge=6, le=1800)
    cors_origins: list[str] = Field(default_factory=list)
    artifact_storage: Literal["local", "cos"] = "local"
    # artifact_storage "cos": the bucket (NAME-APPID); region and endpoint default to the backup's. The key is
    # the COS_SECRET_ID / COS_SECRET_KEY secrets.
    artifact_cos_bucket: str | None = None
    artifact_cos_region: str | None = None
    artifact_cos_endpoint: CosEndpoint = None
    # Who may sign up: "closed" (only `inv users.add`), "invite" (`inv users.invite` codes) or "open" (anyone:
    # every visitor can spend the LLM account's money).
    registration: Literal["open", "invite", "closed"] = "closed"
    # LLM tokens a day (since midnight in `timezone`): per user (admins exempt), and for the whole service.
    daily_token_quota: int = Field(default=500_000, ge=1)
    daily_token_ceiling: int = Field(default=5_000_000, ge=1)
    # Run the project's local OpenAI-compatible stand-in next to the API (a sandbox; never production).
    llm_stub: bool = False

    @model_validator(mode="after")
    def _timeouts_nest(self) -> Service:
        if self.agent_timeout > self.workflow_timeout:
            raise ValueError("agent_timeout must not exceed workflow_timeout")
        if self.artifact_storage == "cos" and not self.artifact_cos_bucket:
            raise ValueError("artifact_storage 'cos' needs artifact_cos_bucket (NAME-APPID)")
        return self


class Nginx(_Section):
    """The public edge: request size and the per-address rate of login attempts."""

    body_limit_mb: int = Field(default=20, ge=1, le=1024)
    login_rate_per_minute: int = Field(default=20, ge=1)
    login_burst: int = Field(default=10, ge=0)


class Retention(_Section):
    """Calendar retention of backups."""

    daily: int = Field(default=7, ge=1)
    weekly: int = Field(default=4, ge=0)
    monthly: int = Field(default=6, ge=0)


class Backup(_Section):
    """Where and when backups go (Tencent COS)."""

    enabled: bool = False
    schedule: str = "30 3 * * *"
    # Redis alone, more often (e.g. "15 * * * *"): snapshots kept for a day beside the full backups.
    redis_schedule: str | None = None
    cos_bucket: str | None = None
    cos_region: str = "ap-shanghai"
    # A COS endpoint domain (e.g. cos-internal.ap-shanghai.tencentcos.cn from inside Tencent Cloud), or
    # http://IP:PORT for a COS-compatible server reached by address (the test rig's local COS).
    cos_endpoint: CosEndpoint = None
    prefix: Annotated[
        str, _matching(r"([A-Za-z0-9._-]+/)*", "must be empty or folder names each ending in '/', such as 'backups/'")
    ] = "backups/"
    age_recipient: str | None = None
    # The operator's age private key file (never sent to the host's disk): inv restore and restore.drill.
    age_identity_file: str | None = None
    # Multipart part size; COS allows 1 MB to 5 GB per part and 10000 parts per object.
    part_size_mb: int = Field(default=16, ge=1, le=5120)
    # Point-in-time recovery: PostgreSQL archives its WAL to COS (age-encrypted); a quiet database still
    # closes a segment every archive_timeout seconds, which bounds what a lost host loses.
    pitr: bool = False
    archive_timeout: int = Field(default=60, ge=5, le=60)
    # BackupNotVerified fires when the newest backup a drill passed is older than this (a weekly drill: 8).
    verified_max_age_days: int = Field(default=8, ge=1, le=366)
    retention: Retention = Field(default_factory=Retention)
    # The bucket's lifecycle (inv cos.setup): backups move to STANDARD_IA after this many days, to ARCHIVE after
    # archive_after_days (none: an archived object needs a restore request before anyone can read it), and a
    # deleted or overwritten backup object stays recoverable for noncurrent_days (versioning keeps it).
    infrequent_after_days: int = Field(default=30, ge=1)
    archive_after_days: int | None = Field(default=None, ge=1)
    noncurrent_days: int = Field(default=30, ge=1)

    @field_validator("schedule", "redis_schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _CRON.match(value.strip()):
            raise ValueError("must be a 5-field cron schedule such as '30 3 * * *'")
        return value.strip()

    @model_validator(mode="after")
    def _enabled_needs(self) -> Backup:
        if self.enabled and not self.cos_bucket:
            raise ValueError("enabled backups need cos_bucket (NAME-APPID)")
        if self.enabled and not (self.age_recipient or "").startswith("age1"):
            raise ValueError("enabled backups need age_recipient, an age public key starting with 'age1'")
        if self.archive_after_days is not None and self.archive_after_days <= self.infrequent_after_days:
            raise ValueError("archive_after_days must be later than infrequent_after_days (or unset)")
        return self


class Monitoring(_Section):
    """The Prometheus/Alertmanager profile of the stack, and the thresholds its alerts use."""

    enabled: bool = True
    retention_time: PrometheusDuration = "15d"
    retention_size: str = Field(default="2GB", pattern=r"^[1-9][0-9]*(B|KB|MB|GB|TB)$")
    scrape_interval: PrometheusDuration = "15s"
    # How long every agent slot must stay busy before AgentsSaturated fires.
    saturation_for: PrometheusDuration = "5m"
    # Alert when the P95 of an agent turn / of the LLM's time to first token stays above these (seconds).
    # Below the histograms' top bucket edges (600 s, 10 s): a P95 is never estimated above those.
    turn_p95_seconds: int = Field(default=120, ge=1, lt=600)
    first_token_p95_seconds: int = Field(default=5, ge=1, lt=10)
    # Open WebSockets the site is sized for; the alert fires at 80 % of it.
    websocket_limit: int = Field(default=1000, ge=1)
    # An external Prometheus may scrape https://SITE/metrics from these networks, with basic auth (user
    # "metrics", password: the METRICS_PASSWORD secret). Empty: nginx does not serve /metrics.
    metrics_allow_from: list[str] = Field(default_factory=list)

    @field_validator("metrics_allow_from")
    @classmethod
    def _metrics_networks(cls, value: list[str]) -> list[str]:
        for cidr, network in zip(value, _networks(value), strict=True):
            if network.prefixlen == 0:
                raise ValueError(f"{cidr!r} opens /metrics to everyone: name your Prometheus's addresses")
        return value


class Notify(_Section):
    """Where operators are told: alerts (through the relay) and deploy/rollback results.

    The WeCom group robot's URL (with its key) is the WECOM_WEBHOOK_URL secret; e-mail goes through
    smtp_host (password: the SMTP_PASSWORD secret) to email_to."""

    email_to: list[str] = Field(default_factory=list)
    smtp_host: str = ""
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_user: str = ""
    smtp_from: str = ""
    # Also tell them about every deploy and rollback (sent from the operator's machine).
    deploys: bool = True

    @field_validator("email_to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", address):
                raise ValueError(f"{address!r} is not an e-mail address")
        return value

    @model_validator(mode="after")
    def _email_needs(self) -> Notify:
        if self.email_to and not (self.smtp_host and self.smtp_from):
            raise ValueError("email_to needs smtp_host and smtp_from")
        return self


class Deploy(_Section):
    """How deploy and rollback move traffic between releases (appliance/deploy.py, appliance/warm.py)."""

    # Minutes the previous release's API stays up in standby after a switch, so that a rollback is an nginx
    # switch; 0 stops it at once. A host without the memory for two APIs drains it at once too, and says so.
    keep_warm_minutes: int = Field(default=15, ge=0, le=1440)
    # A starting API's health gate: this many healthy answers in a row, this many seconds apart.
    health_checks: int = Field(default=3, ge=1, le=20)
    health_interval: float = Field(default=0.5, ge=0.1, le=10)
    # Several app hosts: after the first host (the canary) is deployed and healthy, this many hosts at a time.
    batch: int = Field(default=1, ge=1, le=100)


CONSOLE_PATH = "/console/"  # where the built-in console goes when the team's front end takes /


class Frontend(_Section):
    """The front end nginx serves (appliance/frontend.py, docs/frontend.md): the built-in console, or the team's own
    build, shipped with each release."""

    # "console": the console baked into the API image. Otherwise exactly one of `dist` (a built folder) or
    # `build` (a command run in `dir` on the operator's machine, leaving `output` there); paths relative to this file.
    source: Literal["console"] | None = None
    dist: str | None = None
    build: str | None = None
    dir: str | None = None
    output: str = "dist"
    # Where the team's front end is mounted; the console moves to /console/ when it takes /.
    path: Annotated[str, _matching(r"/([a-z0-9][a-z0-9_-]*/)*", "must be / or a folder such as /app/")] = "/"
    # An https:// origin (Tencent CDN) that browsers fetch /assets/ from, which pulls them from this site.
    cdn_origin: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Frontend:
        given = [name for name in ("source", "dist", "build") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"set one of source, dist or build, not {' and '.join(given)}")
        if self.build is not None and not self.dir:
            raise ValueError("build needs dir: the folder (relative to this file) the command runs in")
        if self.build is None and self.dir is not None:
            raise ValueError("dir is only for build; a built folder is dist")
        if self.path == CONSOLE_PATH:
            raise ValueError(f"path {CONSOLE_PATH} is the built-in console's; pick another, such as /app/")
        if self.cdn_origin is not None and not is_origin(self.cdn_origin):
            raise ValueError("cdn_origin must be an origin such as https://static.example.com")
        return self

    @property
    def custom(self) -> bool:
        """Whether the team's own front end is served (else only the console)."""
        return self.dist is not None or self.build is not None

    @property
    def console_path(self) -> str:
        """Where the built-in console is served: `/`, or `/console/` when the team's front end takes `/`."""
        return CONSOLE_PATH if self.custom and self.path == "/" else "/"


# libpq's modes that encrypt; the weaker ones (disable, allow, prefer) fall back to plaintext without a word.
SSLMODES = ("verify-full", "verify-ca", "require")


class Database(_Section):
    """A managed PostgreSQL (TencentDB for PostgreSQL) instead of the stack's container (docs/production.md).

    Passwords are secrets: DATABASE_PASSWORD for `user`, DATABASE_MIGRATION_PASSWORD for `migration_user`."""

    host: str = Field(min_length=1)
    port: int = Field(default=5432, ge=1, le=65535)
    name: str = Field(min_length=1)
    user: str = Field(min_length=1)
    sslmode: str = "verify-full"
    # The CA certificate (the TencentDB console's download) that signed the server's, relative to this file.
    ca_file: str | None = None
    # A role of its own for migrations (DDL); `user` then needs only row rights (docs/production.md).
    migration_user: str | None = None

    @field_validator("sslmode")
    @classmethod
    def _encrypting(cls, value: str) -> str:
        if value not in SSLMODES:
            raise ValueError(
                f"{value!r} must be one of {', '.join(SSLMODES)}: a managed database is reached over TLS only, "
                "never with a silent fallback to plaintext"
            )
        return value

    @model_validator(mode="after")
    def _ca_file(self) -> Database:
        if self.sslmode != "require" and not self.ca_file:
            raise ValueError(f"sslmode {self.sslmode!r} needs ca_file: the CA certificate from the TencentDB console")
        if self.sslmode == "require" and self.ca_file:
            raise ValueError("sslmode 'require' checks no CA: use 'verify-full' with this ca_file, or drop ca_file")
        return self


class ManagedRedis(_Section):
    """A managed Redis (TencentDB for Redis, SSL on) instead of the stack's container; its password is the
    MANAGED_REDIS_PASSWORD secret. The certificate and its host name are checked (verify-full)."""

    host: str = Field(min_length=1)
    port: int = Field(default=6379, ge=1, le=65535)
    tls: bool = True
    # The CA certificate that signed the server's, relative to this file.
    ca_file: str = Field(min_length=1)

    @field_validator("tls")
    @classmethod
    def _tls_only(cls, value: bool) -> bool:
        if not value:
            raise ValueError("must be true: a managed Redis is reached over TLS only (turn SSL on in its console)")
        return value


class HostSetup(_Section):
    """How bootstrap prepares the operating system of a CVM."""

    # Tencent's NTP: the first is reachable from inside Tencent Cloud, the second from anywhere.
    ntp_servers: list[str] = Field(default_factory=lambda: ["ntpupdate.tencentyun.com", "time1.cloud.tencent.com"])
    swap: Literal["auto", "off"] | int = "auto"
    sysctl: dict[str, int | str] = Field(default_factory=dict)
    operator_user: str | None = None
    ssh_allow_from: list[str] = Field(default_factory=lambda: ["0.0.0.0/0"])
    docker_source: Literal["distribution", "docker-ce"] = "distribution"
    docker_ce_mirror: str = "https://mirrors.cloud.tencent.com/docker-ce"
    registry_mirrors: list[str] = Field(default_factory=list)
    unattended_upgrades: bool = True
    fail2ban: bool = True
    journald_max_use: str = "500M"
    min_memory_mb: int = Field(default=1800, ge=256)
    min_disk_mb: int = Field(default=4096, ge=256)

    @field_validator("ssh_allow_from")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        _networks(value)
        if not value:
            raise ValueError("must allow SSH from somewhere, or the next bootstrap cannot connect")
        return value

    @field_validator("swap")
    @classmethod
    def _swap_size(cls, value: str | int) -> str | int:
        if isinstance(value, int) and not 256 <= value <= 65536:
            raise ValueError("a swap size is in MB, from 256 to 65536 (or 'auto' / 'off')")
        return value

    @field_validator("operator_user")
    @classmethod
    def _user_name(cls, value: str | None) -> str | None:
        if value is not None and (value == "root" or not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value)):
            raise ValueError("must be a lower-case Linux user name other than root")
        return value

    @property
    def ssh_open_to_all(self) -> bool:
        return any(ipaddress.ip_network(cidr, strict=False).prefixlen == 0 for cidr in self.ssh_allow_from)


class Settings(_Section):
    """One environment's complete, validated settings."""

    name: Annotated[
        str, _matching(r"[a-z][a-z0-9-]{0,30}", "must be lower-case letters, digits and '-', starting with a letter")
    ] = "appliance"
    base_dir: str = DEFAULT_BASE
    domain: str = ""
    # The address browsers use when it is not https://DOMAIN (a port forward, a load balancer).
    public_url: str = ""
    timezone: Annotated[
        str, _matching(r"[A-Za-z_]+(/[A-Za-z0-9_+\-]+)*", "must be a tz database name such as Asia/Shanghai or UTC")
    ] = "Asia/Shanghai"
    secrets_file: str = "secrets.env"
    # Releases (and their API images) kept on the host; the current one and the rollback target always stay.
    keep_releases: int = Field(default=5, ge=2, le=100)
    hosts: list[Host] = Field(min_length=1)
    host: HostSetup = Field(default_factory=HostSetup)
    tls: Tls = Field(default_factory=Tls)
    images: Images = Field(default_factory=Images)
    service: Service = Field(default_factory=Service)
    nginx: Nginx = Field(default_factory=Nginx)
    backup: Backup = Field(default_factory=Backup)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    notify: Notify = Field(default_factory=Notify)
    deploy: Deploy = Field(default_factory=Deploy)
    frontend: Frontend = Field(default_factory=Frontend)
    # Managed data services (TencentDB); unset: the stack's own postgres and redis containers.
    database: Database | None = None
    redis: ManagedRedis | None = None

    @field_validator("domain")
    @classmethod
    def _host_name(cls, value: str) -> str:
        if value and not is_host_name(value):
            raise ValueError(
                f"{value!r} is not a host name: write it as agents.example.com (no scheme, port, path, spaces or "
                "trailing dot); leave it empty for an IP-only host"
            )
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if value and not is_origin(value):
            raise ValueError("must be an origin such as https://agents.example.com or https://203.0.113.10:8443")
        return value

    @field_validator("base_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or value.rstrip("/") == "":
            raise ValueError("must be an absolute directory other than /")
        return value.rstrip("/")

    @property
    def paths(self) -> HostPaths:
        """Every path of the appliance's layout on the host, below `base_dir`."""
        return HostPaths(self.base_dir)

    @model_validator(mode="after")
    def _acme_needs_domain(self) -> Settings:
        if self.tls.mode == "acme" and not self.domain:
            raise ValueError("tls.mode 'acme' needs a domain")
        return self

    @model_validator(mode="after")
    def _app_hosts_share_their_data(self) -> Settings:
        # Several app hosts serve one site behind a CLB: every host must see the same uploads, database and Redis.
        count = len(self.hosts)
        labels = [host.label for host in self.hosts]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        unmanaged = [table for table, managed in (("database", self.database), ("redis", self.redis)) if not managed]
        problems = [
            (twice, f'{", ".join(twice)} listed twice: give each host its own name = "..."'),
            (
                count > 1 and self.service.artifact_storage != "cos",
                f'{count} app hosts need shared uploads: set service.artifact_storage = "cos" '
                "(with local storage each host would keep its own files)",
            ),
            (
                count > 1 and unmanaged,
                f"{count} app hosts need managed data: set {' and '.join(unmanaged)} = {{ ... }} (TencentDB, "
                "docs/scaling.md step 2): each host's own containers would be a separate database",
            ),
        ]
        first = next((message for refused, message in problems if refused), None)
        if first is not None:
            raise ValueError(f"hosts: {first}")
        return self

    @model_validator(mode="after")
    def _backup_reads_the_stack(self) -> Settings:
        # A managed database is dumped over TLS from a client container (docs/backups.md); what is refused here is
        # what the appliance cannot do for managed data: archive its WAL, or snapshot a managed Redis.
        if self.backup.pitr and self.database:
            raise ValueError(
                "backup.pitr: a managed database's WAL is not the appliance's to archive: set backup.pitr = false "
                "and use TencentDB's own point-in-time restore (docs/backups.md, 'With a managed database')"
            )
        if self.backup.enabled and self.backup.redis_schedule and self.redis:
            raise ValueError(
                "backup.redis_schedule: a managed Redis is not snapshotted by the appliance (TencentDB for Redis's "
                "own backups cover it): remove redis_schedule (docs/backups.md, 'With a managed database')"
            )
        return self


@dataclass(frozen=True)
class Config:
    """A validated environment of a config file, with paths resolved against the file's folder."""

    path: Path
    env: str
    environments: tuple[str, ...]
    settings: Settings
    # The label of the one configured host `--host NAME` picked; None: a task acts on every host.
    picked: str | None = None
    # [[hosts]] in the file's order, kept by on_host (which puts the host acted on first in settings.hosts); ():
    # settings.hosts is that order.
    pool: tuple[Host, ...] = ()

    @property
    def configured_hosts(self) -> tuple[Host, ...]:
        """[[hosts]] as the file lists them, whichever host this config acts on (its first: the canary, and the
        host whose Prometheus scrapes the others)."""
        return self.pool or tuple(self.settings.hosts)

    def resolve(self, relative: str) -> Path:
        """A path from the config, relative to the config file's folder, `~` expanded."""
        candidate = Path(relative).expanduser()
        return candidate if candidate.is_absolute() else self.path.parent / candidate

    @property
    def secrets_path(self) -> Path:
        return self.resolve(self.settings.secrets_file)

    @property
    def ca_path(self) -> Path:
        """The folder of the appliance's private CA (tls.mode "self-signed"), on the operator's machine."""
        return self.resolve(self.settings.tls.ca_dir or f".appliance-ca/{self.settings.name}-{self.env}")

    @property
    def on_first_host(self) -> bool:
        """Whether this config acts on the first of [[hosts]]: the canary, and the one host of several that takes
        the scheduled backups (they share one managed database: one dump each time)."""
        return self.settings.hosts[0].label == self.configured_hosts[0].label

    def with_host(self, target: str) -> Config:
        """This config aimed at `--host target`: one of [[hosts]] when it names one (Host.answers_to), else
        `user@address[:port]` instead of [[hosts]]."""
        named = next((host for host in self.settings.hosts if host.answers_to(target)), None)
        if named is not None:
            return dataclasses.replace(self.on_host(named), picked=named.label)
        host = parse_host_target(target, self.settings.hosts[0])
        return Config(self.path, self.env, self.environments, self.settings.model_copy(update={"hosts": [host]}))

    def on_host(self, host: Host) -> Config:
        """This config acting on `host`: it comes first in `settings.hosts` (where every per-host operation looks),
        the others stay listed after it (the private CA's scope names them all)."""
        others = [item for item in self.configured_hosts if item.label != host.label]
        settings = self.settings.model_copy(update={"hosts": [host, *others]})
        return dataclasses.replace(self, settings=settings, pool=self.configured_hosts)

    def app_hosts(self) -> list[Config]:
        """One config per host a task acts on, in [[hosts]] order (the first is a deploy's canary): every host, or
        the one `--host NAME` picked."""
        hosts = [host for host in self.configured_hosts if self.picked in (None, host.label)]
        return [self.on_host(host) for host in hosts]


def parse_host_target(target: str, template: Host) -> Host:
    """`root@1.2.3.4`, `ubuntu@cvm:2222` or `1.2.3.4` → a Host keeping the template's key and known_hosts."""
    match = re.fullmatch(r"(?:(?P<user>[a-z_][a-z0-9_-]*)@)?(?P<address>[^@:\s]+)(?::(?P<port>\d{1,5}))?", target)
    if not match or (match["port"] and not 0 < int(match["port"]) < 65536):
        raise ConfigError(f"--host {target!r}: expected USER@ADDRESS[:PORT], e.g. root@1.2.3.4")
    return template.model_copy(
        update={
            "address": match["address"],
            "user": match["user"] or template.user,
            "port": int(match["port"]) if match["port"] else template.port,
        }
    )


def config_path(explicit: str | None) -> Path:
    """The config file named on the command line, else $APPLIANCE_CONFIG, else ./appliance.toml."""
    return Path(explicit or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG)


def load_config(path: Path, env: str | None = None) -> Config:
    """Read and validate every environment of `path`; return the one named `env`.

    Without `env`: the file's only environment, else "production".
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (copy appliance.example.toml to {path}, or pass --config)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    environments = document.pop("environments", {})
    if not isinstance(environments, dict) or not all(isinstance(v, dict) for v in environments.values()):
        raise ConfigError(f"{path}: environments: must be tables such as [environments.production]")
    if env is None:
        env = next(iter(environments)) if len(environments) == 1 else "production"
    if env not in environments:
        known = ", ".join(sorted(environments)) or "none"
        raise ConfigError(f"{path}: environments.{env}: not defined (defined: {known})")

    problems: list[str] = []
    chosen: Settings | None = None
    for name in sorted(environments):
        overrides = environments[name]
        try:
            settings = Settings.model_validate(_deep_merge(document, overrides))
        except ValidationError as exc:
            problems.extend(_describe(error, name, overrides) for error in exc.errors())
            continue
        if name == env:
            chosen = settings
    if problems:
        unique = list(dict.fromkeys(problems))
        raise ConfigError("\n".join(f"{path}: {problem}" for problem in unique))
    assert chosen is not None
    return Config(path.resolve(), env, tuple(sorted(environments)), chosen)


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: Mapping[str, Any], env: str, overrides: Mapping[str, Any]) -> str:
    """`field.path: message`, naming the environment table when the value came from there."""
    loc = tuple(part for part in error["loc"] if not str(part).startswith("function-"))
    where = ".".join(str(part) for part in loc)
    if _defined_in(overrides, loc):
        where = f"environments.{env}.{where}"
    if error["type"] == "extra_forbidden":
        message = "unknown key" + _suggestion(loc)
    elif error["type"] == "missing":
        message = f"required, missing (set it at top level or under [environments.{env}])"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where or '(top level)'}: {message}"


def _defined_in(tree: Any, loc: Sequence[Any]) -> bool:
    for part in loc:
        in_table = isinstance(tree, Mapping) and part in tree
        in_list = isinstance(tree, list) and isinstance(part, int) and part < len(tree)
        if in_table or in_list:
            tree = tree[part]
        else:
            return False
    return bool(loc)


def _suggestion(loc: Sequence[Any]) -> str:
    """' (did you mean X?)' when an unknown key is a near miss of a known one."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        if isinstance(part, int):  # an index into a list such as hosts
            continue
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        inner = getattr(annotation, "__args__", (annotation,))
        nested = next((t for t in inner if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if nested is None:
            return ""
        model = nested
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
