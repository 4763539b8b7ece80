"""The executor against the sandbox over SSH: changed, then ok; check mode changes nothing."""

from __future__ import annotations

import pytest

from appliance.executor import Executor
from appliance.remote import RemoteHost
from appliance.report import summary_table
from appliance.steps import Directory, ManagedFile, Step
from tests.conftest import RUN_ID

pytestmark = pytest.mark.e2e


def test_changed_then_ok_and_check_changes_nothing(sandbox_host: RemoteHost) -> None:
    folder = f"/etc/{RUN_ID}-sample"
    steps: list[Step] = [
        Directory(folder, 0o750, "root", "adm"),
        ManagedFile(f"{folder}/sample.conf", b"answer = 42\n", 0o640, "root", "adm"),
    ]

    def listing() -> str:
        return sandbox_host.run(f"ls -la {folder} 2>&1; cat {folder}/sample.conf 2>&1").stdout

    before = listing()
    checked = Executor(sandbox_host, check=True).apply_all(steps)
    assert [result.status for result in checked] == ["pending", "pending"]
    assert listing() == before  # nothing was created

    applied = Executor(sandbox_host).apply_all(steps)
    assert [result.status for result in applied] == ["changed", "changed"], summary_table(applied, "sandbox")
    assert sandbox_host.run(f"stat -c '%a %U %G' {folder}/sample.conf").stdout == "640 root adm\n"

    again = Executor(sandbox_host).apply_all(steps)
    assert [result.status for result in again] == ["ok", "ok"]
    assert [result.status for result in Executor(sandbox_host, check=True).apply_all(steps)] == ["ok", "ok"]

    sandbox_host.run(f"chmod 666 {folder}/sample.conf")
    drifted = Executor(sandbox_host).apply_all(steps)
    assert [result.status for result in drifted] == ["ok", "changed"]
    assert drifted[1].actions == ["mode 666 → 640"]
    assert "1 ok, 1 changed, 0 pending, 0 failed" in summary_table(drifted, "sandbox")
