"""The host layout (docs/architecture.md, "Host layout") in code: every path under `base_dir` has its name here.

No imports: the backup zipapp carries this module too, so the host side asks the same value for its paths.
"""

from __future__ import annotations

from dataclasses import dataclass

# The config's base_dir unless it names another; also where the backup zipapp looks for its settings by default.
DEFAULT_BASE = "/opt/appliance"


@dataclass(frozen=True)
class HostPaths:
    """The appliance's paths on a host, below `base` (the config's `base_dir`)."""

    base: str

    def below_base(self, path: str) -> str:
        """`path` relative to `base`: how an archive of the host's state names it."""
        return path.removeprefix(self.base + "/")

    @property
    def releases(self) -> str:
        return f"{self.base}/releases"

    def release(self, version: str) -> str:
        """A release's folder: its compose files, env files, nginx/, monitoring/, www/, manifest.json."""
        return f"{self.releases}/{version}"

    @property
    def current(self) -> str:
        """The link to the serving release's folder."""
        return f"{self.base}/current"

    @property
    def bin(self) -> str:
        """The host-side scripts from scripts/."""
        return f"{self.base}/bin"

    def script(self, name: str) -> str:
        return f"{self.bin}/{name}"

    @property
    def compose(self) -> str:
        """The host's Compose command (v2 or v1), rendered by bootstrap."""
        return self.script("compose")

    @property
    def backup_bundle(self) -> str:
        """The backup code, a zipapp run by bin/backup.sh."""
        return f"{self.base}/lib/backup.pyz"

    @property
    def shared(self) -> str:
        """What outlives releases: data, certificates, backups, the deploy lock and logs."""
        return f"{self.base}/shared"

    @property
    def nginx(self) -> str:
        """The folder nginx reads (mounted as conf.d): the current site and upstream files."""
        return f"{self.shared}/nginx"

    @property
    def drain_flag(self) -> str:
        """Exists while `inv host.drain` holds the host out of the load balancer: nginx, which sees it in its own
        folder, then answers /api/health with 503 (several hosts only)."""
        return f"{self.nginx}/drained"

    @property
    def monitoring(self) -> str:
        """The folder Prometheus, Alertmanager and the relay read (mounted whole): the current release's monitoring
        files, published at each switch, so a release change is a reload, not a recreate."""
        return f"{self.shared}/monitoring"

    @property
    def www(self) -> str:
        """nginx's web root: the current release's front end, and ACME's challenge folder."""
        return f"{self.shared}/www"

    @property
    def certs(self) -> str:
        """What nginx serves: fullchain.pem, privkey.pem and the private CA's public ca.pem."""
        return f"{self.shared}/certs"

    @property
    def data(self) -> str:
        return f"{self.shared}/data"

    @property
    def backups(self) -> str:
        """latest/ (the newest backup's local copy), backup.log, .lock, metrics.json."""
        return f"{self.shared}/backups"

    @property
    def backup_settings(self) -> str:
        """The backup settings and COS key (0600), written by bootstrap."""
        return f"{self.shared}/backup.json"

    @property
    def wal_spool(self) -> str:
        """Where PostgreSQL archives WAL for point-in-time recovery; compose mounts it into postgres."""
        return f"{self.shared}/wal"

    @property
    def metrics(self) -> str:
        """Prometheus textfile metrics (TLS expiry, containers, backup.prom)."""
        return f"{self.shared}/metrics"

    @property
    def deploy_lock(self) -> str:
        """Exists while a deploy runs (made with mkdir, which is atomic); holder.json inside says who."""
        return f"{self.shared}/deploy.lock"

    @property
    def audit_log(self) -> str:
        """One JSON line per deploy, rollback or lock break."""
        return f"{self.shared}/audit.jsonl"

    @property
    def history(self) -> str:
        """The versions that became current, in order (rollback's memory)."""
        return f"{self.shared}/history"

    @property
    def host_record(self) -> str:
        """What bootstrap found: OS, Docker, which Compose."""
        return f"{self.shared}/host.json"

    @property
    def acme_ca(self) -> str:
        """The CA bundle certbot trusts the ACME server with (tls.acme_ca_file)."""
        return f"{self.shared}/acme-ca.pem"
