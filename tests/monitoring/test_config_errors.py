"""Monitoring and notification settings: a mistake is one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ConfigError
from tests.monitoring.conftest import example_config


@pytest.mark.unit
@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[environments.production.monitoring]\nretention_time = "15 days"',
            "environments.production.monitoring.retention_time: must be a Prometheus duration such as 15s, 5m or 15d",
        ),
        (
            "[environments.production.monitoring]\nfirst_token_p95_seconds = 10",
            "environments.production.monitoring.first_token_p95_seconds: Input should be less than 10",
        ),
        (
            '[environments.production.monitoring]\nmetrics_allow_from = ["0.0.0.0/0"]',
            "environments.production.monitoring.metrics_allow_from: '0.0.0.0/0' opens /metrics to everyone",
        ),
        (
            '[environments.production.monitoring]\nmetrics_allow_from = ["my-prometheus"]',
            "environments.production.monitoring.metrics_allow_from: 'my-prometheus' is not an address or CIDR",
        ),
        (
            '[environments.production.notify]\nemail_to = ["ops@example.com"]',
            "environments.production.notify: email_to needs smtp_host and smtp_from",
        ),
        (
            '[environments.production.notify]\nemail_to = ["ops"]',
            "environments.production.notify.email_to: 'ops' is not an e-mail address",
        ),
        (
            '[environments.production.notify]\nsmtp_security = "tls"',
            "environments.production.notify.smtp_security: Input should be 'starttls', 'ssl' or 'none'",
        ),
    ],
)
def test_bad_monitoring_settings_are_one_line(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        example_config(tmp_path, extra_toml="\n" + toml + "\n")
    lines = str(raised.value).splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0]
