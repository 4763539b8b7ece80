"""The warm window's decisions and commands, without a host (the sandbox e2e runs them: tests/e2e/test_deploy.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from appliance.config import Settings, load_config
from appliance.releases import Release
from appliance.steps import Fact, Run
from appliance.warm import ApiUp, KeepWarm, end_window, memory_shortfall, standby_flag, warm_unit
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def settings(**deploy: object) -> Settings:
    base = load_config(REPO / "appliance.example.toml").settings
    return base.model_copy(update={"deploy": base.deploy.model_copy(update=deploy)})


def host(available_mb: int, warm_mb: int, total_mb: int = 4096, apis: str = "") -> dict[str, Fact]:
    return {
        "available_kb": Fact(f"{available_mb * 1024}\n", 0),
        "total_kb": Fact(f"{total_mb * 1024}\n", 0),
        "warm_kb": Fact(f"{warm_mb * 1024}\n", 0),
        "apis": Fact(apis, 0),
    }


def test_a_warm_api_fits_only_with_room_for_the_new_one_to_grow_and_a_reserve() -> None:
    assert memory_shortfall(available_mb=2000, warm_api_mb=400, total_mb=4096) is None
    short = memory_shortfall(available_mb=800, warm_api_mb=400, total_mb=4096)
    assert short == (
        "800 MB available, the warm API uses 400 MB and 409 MB must stay free: not enough memory to keep it warm"
    )
    assert memory_shortfall(available_mb=500, warm_api_mb=300, total_mb=1024) is not None  # 256 MB floor


def test_the_previous_api_goes_standby_with_a_timer_when_it_fits() -> None:
    previous, current = Release(settings(), "v1"), Release(settings(), "v2")
    (action,) = KeepWarm(previous, current).plan(host(available_mb=3000, warm_mb=300))
    assert isinstance(action, Run)
    assert action.why == "standby for 15 min, then stopped by the agents-warm-v1 timer"
    assert f"touch {standby_flag(previous)}" in action.command
    assert (
        "systemd-run --quiet --collect --property=Type=oneshot --unit=agents-warm-v1 --on-active=15min"
        in action.command
    )
    assert standby_flag(previous) == "/opt/appliance/releases/v1/control/standby"


def test_the_previous_api_is_drained_when_the_window_is_off_or_memory_short() -> None:
    off = KeepWarm(Release(settings(keep_warm_minutes=0), "v1"), Release(settings(keep_warm_minutes=0), "v2"))
    (action,) = off.plan(host(available_mb=3000, warm_mb=300))
    assert isinstance(action, Run) and action.why == "keep_warm_minutes = 0: drain and stop it"
    assert "stop -t 35" in action.command and "systemd-run" not in action.command
    small = KeepWarm(Release(settings(), "v1"), Release(settings(), "v2"))
    (action,) = small.plan(host(available_mb=500, warm_mb=300, total_mb=1024))
    assert isinstance(action, Run) and "not enough memory to keep it warm: drain and stop it" in action.why
    assert "systemd-run" not in action.command
    assert small.plan(host(available_mb=3000, warm_mb=0)) == []  # no previous API running: nothing to do
    # The probe itself, through bash and this machine's Docker, where no such API runs: 0, not init's size.
    probe = subprocess.run(["bash", "-c", small.probes()["warm_kb"]], capture_output=True, text=True, timeout=30)
    assert probe.stdout == "0\n", probe


def test_earlier_warm_apis_are_stopped_but_never_the_current_or_previous_one() -> None:
    step = KeepWarm(Release(settings(), "v2"), Release(settings(), "v3"))
    apis = "agents-api-v1 aaa\nagents-api-v2 bbb\nagents-api-v3 ccc\nother-api-x ddd\n"
    stop, keep = step.plan(host(available_mb=3000, warm_mb=300, apis=apis))
    assert isinstance(stop, Run) and stop.command == (
        "docker stop -t 10 aaa >/dev/null && docker rm aaa >/dev/null"
        " && { systemctl stop agents-warm-v1.timer 2>/dev/null || true; }"
    )
    assert isinstance(keep, Run) and "agents-warm-v2" in keep.command


def test_a_rollback_wakes_a_warm_api_and_passes_one_health_answer_instead_of_the_gate() -> None:
    release = Release(settings(health_checks=4, health_interval=0.25), "v1")
    (warm,) = ApiUp(release, allow_warm=True).plan({"warm": Fact("warm\n", 0)})
    assert isinstance(warm, Run) and warm.why == "warm: out of standby, healthy"
    assert f"rm -f {standby_flag(release)}" in warm.command and "[ $ok -ge 1 ]" in warm.command
    assert "bin/compose" not in warm.command  # no Compose start on the fast path
    start, gate = ApiUp(release, allow_warm=True).plan({"warm": Fact("", 1)})
    assert isinstance(start, Run) and "up -d" in start.command and f"rm -f {standby_flag(release)}" in start.command
    assert isinstance(gate, Run) and gate.why == "health gate: 4 healthy answers in a row"
    assert "[ $ok -ge 4 ]" in gate.command and "sleep 0.25" in gate.command and "seq 480" in gate.command
    assert ApiUp(release, allow_warm=False).probes() == {}  # a deploy always starts its API cold


def test_the_window_ends_under_the_lock_and_spares_an_api_made_current_again(tmp_path: Path) -> None:
    """end_window through real bash: it waits for a held lock, then stops nothing while the release is current."""
    base = tmp_path / "appliance"
    (base / "shared").mkdir(parents=True)
    (base / "releases/v1").mkdir(parents=True)
    (base / "bin").mkdir()
    (base / "current").symlink_to(base / "releases/v1")
    release = Release(settings().model_copy(update={"base_dir": str(base)}), "v1")
    (base / "shared/deploy.lock").mkdir()  # a rollback holds it
    job = subprocess.Popen(["bash", "-c", end_window(release)])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            job.wait(1)  # waiting for the lock
        (base / "shared/deploy.lock").rmdir()
        assert job.wait(10) == 0  # current again: nothing stopped (bin/compose is not even there)
    finally:
        job.kill()
    assert not (base / "shared/deploy.lock").exists()  # released on the way out
    assert warm_unit(release) == "agents-warm-v1"
