"""Steps decide from facts without a host; probe output survives the shell round trip."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from appliance.errors import StepFailed
from appliance.executor import parse_probe_output, probe_script
from appliance.shell import as_root, sh
from appliance.steps import Directory, Fact, ManagedFile, Run, Upload

pytestmark = pytest.mark.unit

CONTENT = b"hello\n"
DIGEST = hashlib.sha256(CONTENT).hexdigest()
ABSENT = Fact("", 1)


def test_missing_file_is_uploaded() -> None:
    step = ManagedFile("/etc/x.conf", CONTENT, 0o640, "root", "adm")
    assert step.plan({"stat": ABSENT, "sha256": ABSENT}) == [
        Upload("/etc/x.conf", CONTENT, 0o640, "root", "adm", "create")
    ]


def test_identical_file_needs_nothing() -> None:
    step = ManagedFile("/etc/x.conf", CONTENT, 0o644)
    facts = {"stat": Fact("regular file 644 root root", 0), "sha256": Fact(f"{DIGEST}  /etc/x.conf", 0)}
    assert step.plan(facts) == []


def test_changed_content_is_rewritten_and_drifted_mode_is_fixed_alone() -> None:
    step = ManagedFile("/etc/x.conf", CONTENT, 0o600)
    stale = {"stat": Fact("regular file 600 root root", 0), "sha256": Fact("0" * 64 + "  /etc/x.conf", 0)}
    assert [type(action) for action in step.plan(stale)] == [Upload]
    drifted = {"stat": Fact("regular file 644 root root", 0), "sha256": Fact(f"{DIGEST}  /etc/x.conf", 0)}
    assert step.plan(drifted) == [Run(sh("chmod", "600", "/etc/x.conf"), "mode 644 → 600")]


def test_directory_plans() -> None:
    step = Directory("/opt/app", 0o750, "root", "docker")
    assert step.plan({"stat": ABSENT}) == [
        Run(sh("install", "-d", "-m", "750", "-o", "root", "-g", "docker", "/opt/app"), "create")
    ]
    assert step.plan({"stat": Fact("directory 750 root docker", 0)}) == []
    with pytest.raises(StepFailed, match="is a regular file, not a directory"):
        step.plan({"stat": Fact("regular file 644 root root", 0)})


def test_probe_script_round_trip_through_real_bash() -> None:
    """Odd output (no trailing newline, blank lines, quotes) and exit codes come back exactly."""
    probes = {
        "plain": "echo one",
        "no_newline": "printf 'a\\n\\nb'",
        "quotes": sh("printf", "%s", 'it\'s "quoted" $HOME'),
        "failing": "echo partial; exit 7",
        "missing": "cat /nonexistent/file",
    }
    run = subprocess.run(["bash", "-c", probe_script(probes)], capture_output=True, text=True, check=True)
    facts = parse_probe_output(probes, run.stdout)
    assert facts["plain"] == Fact("one", 0)
    assert facts["no_newline"] == Fact("a\n\nb", 0)
    assert facts["quotes"] == Fact('it\'s "quoted" $HOME', 0)
    assert facts["failing"] == Fact("partial", 7)
    assert facts["missing"] == Fact("", 1)


def test_as_root_wraps_in_bash_with_pipefail_and_sudo_for_others() -> None:
    assert subprocess.run(["sh", "-c", as_root("false | true", "root")], check=False).returncode == 1
    assert as_root("id", "ubuntu").startswith("sudo -n -- bash -c ")
    hostile = "x; rm -rf / #'\""
    echoed = subprocess.run(["sh", "-c", as_root(sh("printf", "%s", hostile), "root")], capture_output=True, text=True)
    assert echoed.stdout == hostile
