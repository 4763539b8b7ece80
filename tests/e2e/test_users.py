"""`inv users.*` against the deployed sandbox: an account the operator adds over SSH can log in through nginx."""

from __future__ import annotations

import secrets
import subprocess
import sys

import httpx
import pytest

from tests.conftest import REPO, Deployed
from tests.e2e.traffic import Site

pytestmark = pytest.mark.e2e


def users_task(deployed: Deployed, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`inv users.ARGS` as an operator's script runs it, the password (if any) piped on standard input."""
    command = [sys.executable, "-m", "invoke", *args, "--config", str(deployed.sandbox.config_file)]
    return subprocess.run(command, cwd=REPO, input=stdin, capture_output=True, text=True, timeout=300)


def test_an_operator_added_user_logs_in_and_a_deleted_one_no_longer_can(deployed: Deployed, site: Site) -> None:
    email, password = f"op-{secrets.token_hex(5)}@example.test", secrets.token_urlsafe(14)
    added = users_task(deployed, "users.add", "--email", email, stdin=password + "\n")
    assert added.returncode == 0 and f"added {email}" in added.stdout, added.stdout + added.stderr
    assert password not in added.stdout + added.stderr

    headers = site.log_in(email, password)
    with site.client() as client:
        assert client.get("/api/account", headers=headers).json()["email"] == email
    listed = users_task(deployed, "users.list")
    assert any(line.split()[:3] == [email, "user", "active"] for line in listed.stdout.splitlines()), listed.stdout

    again = users_task(deployed, "users.add", "--email", email, stdin="another-password\n")
    assert again.returncode != 0 and again.stderr.strip().endswith(f"users add: {email} already has an account")

    deleted = users_task(deployed, "users.delete", "--email", email, "--yes")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    with pytest.raises(httpx.HTTPStatusError) as refused:
        site.log_in(email, password)  # waits out nginx's per-address login limit, then gets the API's answer
    assert refused.value.response.status_code == 401
