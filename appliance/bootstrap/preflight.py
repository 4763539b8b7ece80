"""Refuse a host the appliance cannot serve from, before anything on it changes."""

from __future__ import annotations

from appliance.config import HostSetup
from appliance.facts import HostFacts

# The OS table; README.md's "Supported hosts" states the same (tests/appliance/test_bootstrap_plan.py compares).
# Exercised: CI bootstraps and deploys a sandbox of that release (appliance/sandbox.py: RELEASES).
EXERCISED_OS = {("debian", "12"), ("debian", "13")}
# Accepted: no archive of theirs is reachable from CI, so bootstrap's plans for them are unit-tested.
ACCEPTED_OS = {("ubuntu", "22.04"), ("ubuntu", "24.04")}
SUPPORTED_OS = EXERCISED_OS | ACCEPTED_OS
USE_INSTEAD = "reinstall the CVM with Ubuntu 24.04 or 22.04, or Debian 13 or 12"
# Systems people still have, by os-release ID and VERSION_ID (None: every version), with why they are refused.
REFUSED_OS: dict[tuple[str, str | None], str] = {
    ("ubuntu", "20.04"): "its standard support ended in 2025, its python3 (3.8) is older than the host-side code "
    "needs and it packages no age: reinstall the CVM with Ubuntu 24.04 or 22.04 (or do-release-upgrade)",
    ("tencentos", None): "an RPM system (dnf, no apt, no ufw) the appliance does not bootstrap yet: "
    f"{USE_INSTEAD} (Tencent Cloud's public images)",
}
# How README.md and the refusals name an os-release ID.
OS_NAMES = {"debian": "Debian", "ubuntu": "Ubuntu", "tencentos": "TencentOS Server"}
SUPPORTED_ARCH = {"x86_64", "aarch64"}


def preflight_problems(setup: HostSetup, facts: HostFacts) -> list[str]:
    """Every reason this host is unfit, each one line that says what to do; [] when it is fit."""
    problems = []
    release = (facts.os_id, facts.os_version)
    refusal = REFUSED_OS.get(release) or REFUSED_OS.get((facts.os_id, None))
    if refusal:
        problems.append(f"unsupported OS {facts.os_name!r}: {refusal}")
    elif release not in SUPPORTED_OS:
        problems.append(f"unsupported OS {facts.os_name!r} ({facts.os_id} {facts.os_version}): {USE_INSTEAD}")
    if facts.arch not in SUPPORTED_ARCH:
        problems.append(f"unsupported architecture {facts.arch}: use x86_64 or aarch64")
    if not facts.systemd:
        problems.append("systemd is not PID 1: the appliance needs a systemd host")
    if facts.memory_mb < setup.min_memory_mb:
        problems.append(
            f"only {facts.memory_mb} MB of memory, needs {setup.min_memory_mb} MB (host.min_memory_mb): "
            "choose a larger instance"
        )
    if facts.disk_free_mb < setup.min_disk_mb:
        problems.append(
            f"only {facts.disk_free_mb} MB free where the appliance lives, needs {setup.min_disk_mb} MB "
            "(host.min_disk_mb): free space or grow the disk"
        )
    return problems
