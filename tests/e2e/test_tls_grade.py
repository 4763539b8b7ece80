"""testssl.sh grades the deployed sandbox's HTTPS: nothing MEDIUM or worse, only TLS 1.2 and 1.3."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.remote import open_host
from tests.conftest import Deployed

pytestmark = pytest.mark.e2e


def test_testssl_finds_nothing_medium_or_worse(deployed: Deployed, tmp_path: Path) -> None:
    assert shutil.which("testssl"), "testssl missing: scripts/dev-prereqs.sh --servers installs Debian's testssl.sh"
    with open_host(load_config(deployed.sandbox.config_file)) as host:
        (tmp_path / "ca.pem").write_text(host.run("cat /opt/appliance/shared/certs/ca.pem").stdout)
    report = tmp_path / "testssl.json"
    target = f"https://127.0.0.1:{deployed.sandbox.https_port}"
    options = ["--quiet", "--color", "0", "--warnings", "off", "--add-ca", str(tmp_path / "ca.pem")]
    run = subprocess.run(
        ["testssl", *options, "--jsonfile", str(report), target],
        capture_output=True,
        text=True,
        timeout=600,
    )
    findings = json.loads(report.read_text()) if report.exists() else []
    assert findings, run.stdout[-2000:] + run.stderr[-2000:]  # its exit code ignores severity: read the JSON
    severe = [f"{f['id']}: {f['finding']} ({f['severity']})" for f in findings if f["severity"] in SEVERE]
    assert severe == []
    offered = {f["id"]: f["finding"] for f in findings if f["id"] in PROTOCOLS}
    assert offered == {
        "SSLv2": "not offered",
        "SSLv3": "not offered",
        "TLS1": "not offered",
        "TLS1_1": "not offered",
        "TLS1_2": "offered",
        "TLS1_3": "offered with final",
    }


SEVERE = ("MEDIUM", "HIGH", "CRITICAL")
PROTOCOLS = ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3")
