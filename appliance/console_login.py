"""A working login for the web console of a deployed appliance (the quickstart's last line).

The user is made once through the public API over TLS, trusting the appliance's own CA (read from the
operator's machine, not from the host it vouches for), and its password kept in a 0600 file, so that a re-run
prints the same login; on a new sandbox it is made again.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Config
from appliance.errors import ApplianceError
from appliance.private_ca import CA_CERT
from appliance.render import site_origin

RATE_LIMIT_PATIENCE_SECONDS = 60.0


@dataclass(frozen=True)
class ConsoleLogin:
    url: str
    email: str
    password: str


def _remembered(saved: Path) -> dict[str, str]:
    if not saved.exists():
        fresh = {"email": f"demo-{secrets.token_hex(3)}@example.test", "password": secrets.token_urlsafe(12)}
        saved.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            json.dump(fresh, out)
    login: dict[str, str] = json.loads(saved.read_text(encoding="utf-8"))
    return login


def _post_once(url: str, body: dict[str, str], tls: ssl.SSLContext) -> tuple[int, float]:
    """The answer's status, and how long it asks to wait before the next try (Retry-After, else 3 s)."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, context=tls, timeout=15) as answer:  # noqa: S310 - https, own CA
            return int(answer.status), 0.0
    except urllib.error.HTTPError as refused:
        wait = refused.headers.get("Retry-After", "")
        return refused.code, float(wait) if wait.isdigit() else 3.0
    except (urllib.error.URLError, OSError) as exc:
        raise ApplianceError(f"{url}: {getattr(exc, 'reason', exc)}: is the appliance deployed (inv deploy)?") from None


def _post(url: str, body: dict[str, str], tls: ssl.SSLContext) -> int:
    """POST `body`; a rate-limited answer (429, nginx's per-address login limit) is retried for up to a minute."""
    deadline = time.monotonic() + RATE_LIMIT_PATIENCE_SECONDS
    code, wait = _post_once(url, body, tls)
    while code == 429 and time.monotonic() + wait < deadline:
        time.sleep(wait)
        code, wait = _post_once(url, body, tls)
    return code


def console_login(config: Config, saved: Path, ca_out: Path) -> ConsoleLogin:
    """Register (once) and log in the demo user; the appliance's CA is written to `ca_out` for a browser."""
    ca_file = config.ca_path / CA_CERT
    if config.settings.tls.mode != "self-signed" or not ca_file.is_file():
        raise ApplianceError(
            f"no private CA in {ca_file}: the console login needs tls.mode 'self-signed', bootstrapped"
        )
    ca = ca_file.read_text(encoding="utf-8")
    ca_out.parent.mkdir(parents=True, exist_ok=True)
    ca_out.write_text(ca, encoding="utf-8")
    tls = ssl.create_default_context(cadata=ca)
    login = _remembered(saved)
    origin = site_origin(config).rstrip("/")
    registered = _post(f"{origin}/api/auth/register", login, tls)
    logged_in = _post(f"{origin}/api/auth/login", login, tls) if registered in (201, 409) else None
    if logged_in == 200:
        return ConsoleLogin(f"{origin}/", login["email"], login["password"])
    if 401 in (registered, logged_in):
        raise ApplianceError(f"the console login in {saved} does not work here: delete that file and run again")
    failed, code = ("login", logged_in) if logged_in is not None else ("register", registered)
    if code == 429:
        raise ApplianceError(f"{origin}/api/auth/{failed} is rate-limited for this address: try again in a few minutes")
    raise ApplianceError(f"{origin}/api/auth/{failed} answered HTTP {code}: see inv logs --service api")
