"""appliance/notify.py against real local receivers: a WeCom-robot-shaped HTTP server and an SMTP server
(aiosmtpd) on 127.0.0.1, and the relay run from the rendered release file as the container runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from appliance import notify
from appliance.secrets import MASK, load_secrets
from tests.conftest import free_port
from tests.http_stub import QuietHandler, serving
from tests.monitoring.conftest import example_config, rendered_release

KEY = "3f1e7a2b-robot-key-0001"

# What Alertmanager POSTs to a webhook receiver (version 4), trimmed to the fields it always sends.
ALERTMANAGER_PAYLOAD: dict[str, Any] = {
    "version": "4",
    "status": "firing",
    "receiver": "relay",
    "groupKey": '{}:{alertname="AgentsSaturated"}',
    "groupLabels": {"alertname": "AgentsSaturated"},
    "commonLabels": {"alertname": "AgentsSaturated", "severity": "warning", "appliance": "agents", "env": "prod"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "AgentsSaturated", "severity": "warning", "appliance": "agents", "env": "prod"},
            "annotations": {
                "summary": "All 10 agent slots busy for 5 minutes; new turns queue",
                "runbook": "docs/runbook.md#agentssaturated",
            },
            "startsAt": "2026-11-23T10:15:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "a1b2c3",
        }
    ],
}


@dataclass
class WecomRobot:
    """A local stand-in for qyapi.weixin.qq.com's robot webhook: records JSON bodies, answers like WeCom."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    errcode: int = 0


@pytest.fixture()
def robot() -> Iterator[WecomRobot]:
    state = WecomRobot(url="")

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            key = self.path.partition("key=")[2]
            if self.path.startswith("/cgi-bin/webhook/send?") and key == KEY:
                state.received.append(json.loads(body))
                answer = {"errcode": state.errcode, "errmsg": "ok" if state.errcode == 0 else "invalid"}
            else:
                answer = {"errcode": 93000, "errmsg": "invalid webhook url"}
            self.reply(200, json.dumps(answer).encode())

    with serving(Handler) as port:
        state.url = f"http://127.0.0.1:{port}/cgi-bin/webhook/send?key={KEY}"
        yield state


@dataclass
class Mailbox:
    port: int
    messages: list[tuple[Envelope, Message]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)


@pytest.fixture()
def mailbox() -> Iterator[Mailbox]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that accepts user ops / password s3cret."""
    box = Mailbox(port=free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
            assert isinstance(envelope.content, bytes)
            box.messages.append((envelope, message_from_bytes(envelope.content)))
            return "250 OK"

    def authenticate(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"ops", b"s3cret")
        if ok:
            box.logins.append(data.login.decode())
        return AuthResult(success=ok)

    controller = Controller(
        Handler(), hostname="127.0.0.1", port=box.port, authenticator=authenticate, auth_require_tls=False
    )
    controller.start()
    yield box
    controller.stop()


def smtp(box: Mailbox, password: str = "s3cret") -> notify.Smtp:  # noqa: S107 - the test server's
    return notify.Smtp("127.0.0.1", box.port, "none", "ops", password, "appliance@example.test", ("ops@example.test",))


@pytest.mark.integration
def test_send_reaches_wecom_and_email(robot: WecomRobot, mailbox: Mailbox) -> None:
    channels = notify.Channels(robot.url, smtp(mailbox))
    failures = notify.send(channels, "deploy v2 on agents: ok", ["release v2 serving", "previous: v1"])
    assert failures == []
    assert robot.received == [
        {
            "msgtype": "markdown",
            "markdown": {"content": "**deploy v2 on agents: ok**\nrelease v2 serving\nprevious: v1"},
        }
    ]
    assert mailbox.logins == ["ops"]
    [(envelope, message)] = mailbox.messages
    assert envelope.rcpt_tos == ["ops@example.test"]
    assert message["Subject"] == "deploy v2 on agents: ok"
    assert message["From"] == "appliance@example.test"
    assert str(message.get_payload()).splitlines() == ["release v2 serving", "previous: v1"]


@pytest.mark.integration
def test_failures_are_lines_without_the_key_or_password(robot: WecomRobot, mailbox: Mailbox) -> None:
    robot.errcode = 93000
    refused_port = free_port()
    channels = notify.Channels(robot.url, smtp(mailbox, password="wrong-password"))
    failures = notify.send(channels, "subject", ["line"])
    assert len(failures) == 2
    assert failures[0] == "WeCom robot at " + robot.url.split("/")[2] + ": refused: invalid"
    assert failures[1].startswith(f"SMTP 127.0.0.1:{mailbox.port}: ")
    unreachable = notify.Channels(f"http://127.0.0.1:{refused_port}/cgi-bin/webhook/send?key={KEY}")
    [down] = notify.send(unreachable, "subject", ["line"])
    assert "Connection refused" in down
    for text in [*failures, down]:
        assert KEY not in text
        assert "wrong-password" not in text
    assert mailbox.messages == []


@pytest.mark.unit
def test_wecom_markdown_stays_under_wecom_s_limit() -> None:
    lines = [f"- 第{i}个告警：智能体全部占用，队列等待中" for i in range(400)]
    payload = notify.wecom_markdown("[FIRING:400] 告警", lines)
    content = payload["markdown"]["content"]
    assert len(content.encode()) <= notify.WECOM_CONTENT_LIMIT
    assert content.startswith("**[FIRING:400] 告警**\n- 第0个告警")
    assert content.endswith("more lines)")
    short = notify.wecom_markdown("s", ["a", "b"])["markdown"]["content"]
    assert short == "**s**\na\nb"


@pytest.mark.unit
def test_alertmanager_payload_becomes_one_message() -> None:
    subject, lines = notify.alert_message(ALERTMANAGER_PAYLOAD)
    assert subject == "[FIRING:1] AgentsSaturated (agents prod)"
    assert lines == [
        "- [warning] All 10 agent slots busy for 5 minutes; new turns queue",
        "  since 2026-11-23 10:15:00 UTC; runbook: docs/runbook.md#agentssaturated",
    ]
    alert = ALERTMANAGER_PAYLOAD["alerts"][0]
    resolved = {
        **ALERTMANAGER_PAYLOAD,
        "alerts": [{**alert, "status": "resolved", "startsAt": "2026-11-23T18:15:00+08:00"}],
    }
    subject, lines = notify.alert_message(resolved)
    assert subject == "[RESOLVED] AgentsSaturated (agents prod)"
    assert lines[0].startswith("- [resolved] ")
    assert lines[1].startswith("  since 2026-11-23 18:15:00 +08:00; ")


@pytest.mark.unit
def test_channels_come_from_config_and_secrets_and_survive_the_relay_env(tmp_path: Path) -> None:
    extra = (
        '\n[environments.production.notify]\nemail_to = ["ops@example.com"]\n'
        'smtp_host = "smtp.exmail.qq.com"\nsmtp_port = 465\n'
        'smtp_security = "ssl"\nsmtp_user = "alerts@example.com"\nsmtp_from = "alerts@example.com"\n'
    )
    secrets = (
        f"WECOM_WEBHOOK_URL=https://robot.example.test/cgi-bin/webhook/send?key={KEY}\nSMTP_PASSWORD=mail-pass-123\n"
    )
    config = example_config(tmp_path, extra_toml=extra, secrets=secrets)
    channels = notify.channels_for(config.settings, load_secrets(config.secrets_path, {}))
    assert channels.wecom_url.endswith(KEY)
    assert channels.smtp == notify.Smtp(
        "smtp.exmail.qq.com",
        465,
        "ssl",
        "alerts@example.com",
        "mail-pass-123",
        "alerts@example.com",
        ("ops@example.com",),
    )
    assert notify.Channels.from_env(channels.to_env()) == channels
    assert not notify.Channels.from_env({}).configured
    # The release's relay.env carries them, masked unless revealed.
    masked = (rendered_release(config, tmp_path / "masked") / "relay.env").read_text()
    assert f"WECOM_WEBHOOK_URL={MASK}\n" in masked and f"SMTP_PASSWORD={MASK}\n" in masked
    assert KEY not in masked and "mail-pass-123" not in masked
    assert "SMTP_HOST=smtp.exmail.qq.com\n" in masked


def _post(url: str, payload: dict[str, Any]) -> int:
    request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.integration
def test_relay_runs_from_the_release_file_alone(tmp_path: Path, robot: WecomRobot, mailbox: Mailbox) -> None:
    """The rendered monitoring/notify.py, run by a bare python3 that cannot import appliance/ (-I, another
    folder), turns Alertmanager's webhook call into a WeCom message and an e-mail."""
    release = rendered_release(example_config(tmp_path), tmp_path / "out")
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        **notify.Channels(robot.url, smtp(mailbox)).to_env(),
    }
    relay = subprocess.Popen(
        [sys.executable, "-I", str(release / "monitoring" / "notify.py"), "relay", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1) as answer:  # noqa: S310
                    assert answer.status == 200
                break
            except OSError:
                assert relay.poll() is None and time.monotonic() < deadline, "relay did not start"
                time.sleep(0.1)
        assert _post(base + notify.RELAY_PATH, ALERTMANAGER_PAYLOAD) == 200
        [message] = robot.received
        assert message["msgtype"] == "markdown"
        assert message["markdown"]["content"].startswith("**[FIRING:1] AgentsSaturated (agents prod)**\n")
        assert "All 10 agent slots busy" in message["markdown"]["content"]
        [(_, mail)] = mailbox.messages
        assert mail["Subject"] == "[FIRING:1] AgentsSaturated (agents prod)"
        # A refusing robot makes the relay answer 502, so Alertmanager retries later.
        robot.errcode = 45009
        assert _post(base + notify.RELAY_PATH, ALERTMANAGER_PAYLOAD) == 502
        assert _post(base + notify.RELAY_PATH, {"not": "alerts"}) == 400
        assert _post(base + "/elsewhere", ALERTMANAGER_PAYLOAD) == 404
    finally:
        relay.terminate()
        output = relay.communicate(timeout=10)[0]
    assert "not delivered: WeCom robot at" in output
    assert KEY not in output
