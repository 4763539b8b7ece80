"""What /api/health says of the data services: which one it talks to and how its TLS is checked, never a password.

The URLs are the ones the clients use (asyncpg reads `sslmode`/`sslrootcert`, redis-py reads `rediss://` with
`ssl_cert_reqs`/`ssl_ca_certs`/`ssl_check_hostname`), so what is reported is what the libraries enforce.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

# libpq's sslmode values that check the server's certificate against a CA (verify-full also checks its name).
VERIFYING_SSLMODES = ("verify-ca", "verify-full")


@dataclass(frozen=True)
class DataTarget:
    """host:port[/name] and the TLS check the client applies: verify-full, verify-ca, require, prefer (TLS if the
    server offers it, unverified) or off."""

    address: str
    tls: str

    @property
    def verifies(self) -> bool:
        return self.tls in VERIFYING_SSLMODES


def _query(url: str) -> dict[str, str]:
    return {key: values[-1] for key, values in parse_qs(urlsplit(url).query).items()}


def database_target(url: str) -> DataTarget:
    """The database a postgresql:// URL names, and its sslmode (asyncpg's default, as libpq's: prefer)."""
    parts = urlsplit(url)
    return DataTarget(f"{parts.hostname}:{parts.port or 5432}{parts.path}", _query(url).get("sslmode", "prefer"))


def redis_target(url: str) -> DataTarget:
    """The Redis a redis:// or rediss:// URL names, and how redis-py checks its certificate."""
    parts = urlsplit(url)
    address = f"{parts.hostname}:{parts.port or 6379}{parts.path}"
    if parts.scheme != "rediss":
        return DataTarget(address, "off")
    query = _query(url)
    if query.get("ssl_cert_reqs", "required") != "required":
        return DataTarget(address, "require")
    checks_name = query.get("ssl_check_hostname", "true").lower() in ("true", "1", "yes", "y", "on")
    return DataTarget(address, "verify-full" if checks_name else "verify-ca")
