"""Tell operators: WeCom (企业微信) group robot messages and e-mail. Standard library only.

One module for both senders of notifications:

- the operator side (deploy, rollback): `send(channels_for(settings, secrets), subject, lines)`;
- the relay on the host (`python3 notify.py relay`), which turns Alertmanager's webhook calls into the
  same messages. Alertmanager has no WeCom robot receiver; the relay container runs this very file
  (rendered into the release as monitoring/notify.py), configured by its environment (`Channels.to_env`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import smtplib
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the relay container has neither pydantic nor the rest of appliance/
    from appliance.config import Settings
    from appliance.secrets import Secrets

# WeCom refuses markdown content over 4096 bytes of UTF-8.
WECOM_CONTENT_LIMIT = 4096
TIMEOUT = 10.0
RELAY_PATH = "/alertmanager"
_SECURITY = ("starttls", "ssl", "none")

log = logging.getLogger("notify")


class NotifyError(Exception):
    """A channel did not take a message; the text never contains the webhook key or a password."""


@dataclass(frozen=True)
class Smtp:
    """An SMTP submission server and who the mail goes to."""

    host: str
    port: int
    security: str  # "starttls", "ssl" or "none"
    user: str
    password: str
    sender: str
    to: tuple[str, ...]


@dataclass(frozen=True)
class Channels:
    """Where notifications go: a WeCom robot webhook URL (it holds the key), e-mail, both or neither."""

    wecom_url: str = ""
    smtp: Smtp | None = None

    @property
    def configured(self) -> bool:
        return bool(self.wecom_url or self.smtp)

    def to_env(self) -> dict[str, str]:
        """The relay container's environment for these channels (`from_env` reads it back)."""
        env = {"WECOM_WEBHOOK_URL": self.wecom_url}
        if self.smtp:
            smtp = self.smtp
            env |= {
                "SMTP_HOST": smtp.host,
                "SMTP_PORT": str(smtp.port),
                "SMTP_SECURITY": smtp.security,
                "SMTP_USER": smtp.user,
                "SMTP_PASSWORD": smtp.password,
                "SMTP_FROM": smtp.sender,
                "EMAIL_TO": ",".join(smtp.to),
            }
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Channels:
        smtp = None
        to = tuple(address for address in env.get("EMAIL_TO", "").split(",") if address)
        if env.get("SMTP_HOST") and to:
            security = env.get("SMTP_SECURITY", "starttls")
            if security not in _SECURITY:
                raise NotifyError(f"SMTP_SECURITY={security!r}: expected one of {', '.join(_SECURITY)}")
            smtp = Smtp(
                host=env["SMTP_HOST"],
                port=int(env.get("SMTP_PORT", "587")),
                security=security,
                user=env.get("SMTP_USER", ""),
                password=env.get("SMTP_PASSWORD", ""),
                sender=env.get("SMTP_FROM", ""),
                to=to,
            )
        return cls(env.get("WECOM_WEBHOOK_URL", ""), smtp)


def channels_for(settings: Settings, secrets: Secrets) -> Channels:
    """The channels an environment's config ([notify]) and secrets (WECOM_WEBHOOK_URL, SMTP_PASSWORD) name."""
    notify = settings.notify
    webhook = secrets.get("WECOM_WEBHOOK_URL")
    password = secrets.get("SMTP_PASSWORD")
    smtp = None
    if notify.email_to:
        smtp = Smtp(
            host=notify.smtp_host,
            port=notify.smtp_port,
            security=notify.smtp_security,
            user=notify.smtp_user,
            password=password.reveal() if password else "",
            sender=notify.smtp_from,
            to=tuple(notify.email_to),
        )
    return Channels(webhook.reveal() if webhook else "", smtp)


def wecom_markdown(subject: str, lines: Sequence[str]) -> dict[str, Any]:
    """A WeCom robot markdown message: the subject in bold, then the lines, cut to WeCom's size limit."""
    head = f"**{subject}**"
    kept: list[str] = []
    for index, line in enumerate(lines):
        more = f"… ({len(lines) - index} more lines)"
        candidate = "\n".join([head, *kept, line])
        if len(candidate.encode()) > WECOM_CONTENT_LIMIT - len(more.encode()) - 1:
            kept.append(more)
            break
        kept.append(line)
    content = "\n".join([head, *kept])
    return {"msgtype": "markdown", "markdown": {"content": content}}


def post_wecom(url: str, payload: Mapping[str, Any], timeout: float = TIMEOUT) -> None:
    """POST one message to a WeCom robot webhook; WeCom answers 200 with errcode 0 when it took it."""
    where = f"WeCom robot at {urllib.parse.urlsplit(url).netloc or '(no host)'}"
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise NotifyError(f"{where}: WECOM_WEBHOOK_URL must be an https:// URL")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise NotifyError(f"{where}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotifyError(f"{where}: {reason}") from None
    try:
        answer = json.loads(body)
    except ValueError:
        raise NotifyError(f"{where}: answer is not JSON") from None
    if not isinstance(answer, dict) or answer.get("errcode") != 0:
        message = answer.get("errmsg", answer) if isinstance(answer, dict) else answer
        raise NotifyError(f"{where}: refused: {message}")


def email_message(smtp: Smtp, subject: str, lines: Sequence[str]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = smtp.sender
    message["To"] = ", ".join(smtp.to)
    message.set_content("\n".join(lines) + "\n")
    return message


def send_email(smtp: Smtp, subject: str, lines: Sequence[str], timeout: float = TIMEOUT) -> None:
    """Submit one e-mail over SMTP (STARTTLS, implicit TLS or plain, as configured)."""
    where = f"SMTP {smtp.host}:{smtp.port}"
    try:
        client: smtplib.SMTP
        if smtp.security == "ssl":
            client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=timeout, context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=timeout)
        with client:
            if smtp.security == "starttls":
                client.starttls(context=ssl.create_default_context())
            if smtp.user:
                client.login(smtp.user, smtp.password)
            client.send_message(email_message(smtp, subject, lines))
    except (smtplib.SMTPException, OSError) as exc:
        raise NotifyError(f"{where}: {exc}") from None


def send(channels: Channels, subject: str, lines: Sequence[str]) -> list[str]:
    """Deliver to every configured channel. Never raises for a channel: returns one line per failure."""
    failures = []
    if channels.wecom_url:
        try:
            post_wecom(channels.wecom_url, wecom_markdown(subject, lines))
        except NotifyError as exc:
            failures.append(str(exc))
    if channels.smtp:
        try:
            send_email(channels.smtp, subject, lines)
        except NotifyError as exc:
            failures.append(str(exc))
    return failures


def alert_message(payload: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Subject and lines for one Alertmanager webhook call (a group of alerts)."""
    alerts = [alert for alert in payload.get("alerts", []) if isinstance(alert, dict)]
    firing = [alert for alert in alerts if alert.get("status") == "firing"]
    resolved = [alert for alert in alerts if alert.get("status") == "resolved"]
    common = payload.get("commonLabels", {})
    name = common.get("alertname") or ", ".join(sorted({a.get("labels", {}).get("alertname", "?") for a in alerts}))
    where = " ".join(str(common[key]) for key in ("appliance", "env") if key in common)
    state = f"FIRING:{len(firing)}" if firing else "RESOLVED"
    subject = f"[{state}] {name}" + (f" ({where})" if where else "")
    lines = []
    for alert in [*firing, *resolved]:
        labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
        severity = labels.get("severity", "")
        marker = "resolved" if alert.get("status") == "resolved" else severity or "firing"
        # Plain text: the same lines go into e-mail, where WeCom's markup would show as tags.
        lines.append(f"- [{marker}] {annotations.get('summary', labels.get('alertname'))}")
        since = _timestamp(str(alert.get("startsAt", "")))
        detail = [f"since {since}"] if since else []
        if annotations.get("runbook"):
            detail.append(f"runbook: {annotations['runbook']}")
        if detail:
            lines.append("  " + "; ".join(detail))
    return subject, lines


def _timestamp(rfc3339: str) -> str:
    """`2026-11-23T10:15:00.123Z` → `2026-11-23 10:15:00 UTC`; an offset is kept as it is."""
    match = re.match(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?$", rfc3339)
    if not match:
        return rfc3339
    zone = "UTC" if match[3] in (None, "Z") else match[3]
    return f"{match[1]} {match[2]} {zone}"


class _RelayHandler(BaseHTTPRequestHandler):
    """POST /alertmanager: deliver; 200 when every channel took it, 502 otherwise (Alertmanager retries)."""

    channels: Channels = Channels()

    def do_POST(self) -> None:
        if self.path != RELAY_PATH:
            self._answer(404, "not found")
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            payload = json.loads(self.rfile.read(length))
        except ValueError:
            self._answer(400, "body is not JSON")
            return
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list) or not payload["alerts"]:
            self._answer(400, "body is not an Alertmanager webhook payload (no alerts)")
            return
        subject, lines = alert_message(payload)
        failures = send(self.channels, subject, lines)
        for failure in failures:
            log.warning("not delivered: %s", failure)
        if not self.channels.configured:
            log.warning("no channel configured (WECOM_WEBHOOK_URL, SMTP_HOST + EMAIL_TO): %s", subject)
        self._answer(502 if failures else 200, "; ".join(failures) or "ok")

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/healthz" else 404, "ok" if self.path == "/healthz" else "not found")

    def _answer(self, status: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def relay_server(channels: Channels, host: str, port: int) -> ThreadingHTTPServer:
    """The relay, bound and ready; `serve_forever()` runs it."""
    handler = type("RelayHandler", (_RelayHandler,), {"channels": channels})
    return ThreadingHTTPServer((host, port), handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The Alertmanager → WeCom / e-mail relay.")
    commands = parser.add_subparsers(dest="command", required=True)
    relay = commands.add_parser("relay", help="serve POST /alertmanager; channels from the environment")
    relay.add_argument("--listen", default="0.0.0.0:9099", help="HOST:PORT (default 0.0.0.0:9099)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    host, _, port = args.listen.rpartition(":")
    try:
        chans = Channels.from_env(os.environ)
    except NotifyError as exc:
        print(f"notify: {exc}", file=sys.stderr)
        return 2
    server = relay_server(chans, host, int(port))
    log.info("relay on %s: WeCom %s, e-mail %s", args.listen, bool(chans.wecom_url), bool(chans.smtp))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
