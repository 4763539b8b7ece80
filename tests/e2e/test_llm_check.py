"""`inv llm.check` and deploy's LLM keys line on the deployed sandbox, whose upstream is the llm-stub container."""

from __future__ import annotations

import json
import re

import pytest

from appliance.config import load_config
from appliance.releases import current_release
from appliance.remote import open_host
from appliance.secrets import load_secrets
from tests.conftest import Deployed, inv

pytestmark = pytest.mark.e2e


def stub_keys(deployed: Deployed, empty_balance: list[str]) -> None:
    """Tell the sandbox's fake LLM, at run time, which keys have no balance (its admin API, from inside it)."""
    config = load_config(deployed.sandbox.config_file)
    body = json.dumps({"empty_balance": empty_balance})
    code = (
        "import urllib.request; urllib.request.urlopen(urllib.request.Request("
        f"'http://127.0.0.1:8900/admin/keys', data={body!r}.encode(), method='POST'))"
    )
    with open_host(config) as remote:
        release = current_release(remote, config.settings)
        assert release is not None
        done = remote.run(release.compose("exec", "-T", "llm-stub", "python3", "-c", code))
    assert done.exit_code == 0, done.stderr


def test_deploy_shows_the_keys_verdict_and_llm_check_tells_ok_from_no_balance(deployed: Deployed) -> None:
    config = load_config(deployed.sandbox.config_file)
    key = load_secrets(config.secrets_path).values["AI_API_KEY"].reveal()
    shown = f"…{key[-4:]}"
    # Deploy's preflight row: the new release's key tried before traffic moved, one line, the step ok.
    assert re.search(rf"^\s+LLM keys\s+ok\s+\S+\s+{shown} ok$", deployed.first_run.stdout, re.M), (
        deployed.first_run.stdout
    )

    ok = inv("llm.check", "--config", str(deployed.sandbox.config_file), timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{shown} ok", ok.stdout + ok.stderr

    stub_keys(deployed, [key])
    try:
        broke = inv("llm.check", "--config", str(deployed.sandbox.config_file), timeout=120)
    finally:
        stub_keys(deployed, [])
    assert broke.returncode != 0
    assert broke.stdout.strip() == f"{shown} no balance (upstream 402: Insufficient Balance)"
    assert "error: no usable LLM key" in broke.stderr
    assert key not in broke.stdout + broke.stderr + deployed.first_run.stdout
