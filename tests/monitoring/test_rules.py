"""Prometheus and Alertmanager configuration as rendered, checked by promtool and amtool; the alert rules'
promtool cases (monitoring/alerts_test*.yml) run, and cover every alert both ways."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.errors import ApplianceError
from appliance.render import cron_max_gap
from tests.conftest import REPO
from tests.monitoring.conftest import example_config, rendered_release

# Minute-scale cases, and day-scale ones evaluated hourly (promtool steps through every evaluation of every case).
RULE_TESTS = (REPO / "monitoring" / "alerts_test.yml", REPO / "monitoring" / "alerts_test_days.yml")


def run(*command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def alert_names(rules_file: Path) -> set[str]:
    document: dict[str, Any] = yaml.safe_load(rules_file.read_text())
    return {rule["alert"] for group in document["groups"] for rule in group["rules"] if "alert" in rule}


@pytest.mark.unit
def test_prometheus_config_and_its_rules_pass_promtool(release: Path, promtool: str) -> None:
    checked = run(promtool, "check", "config", "prometheus.yml", cwd=release / "monitoring")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 27 rules found" in checked.stdout  # 26 alerts and the agent cap
    config = yaml.safe_load((release / "monitoring" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets["api"] == ["api-v1:8000"]  # the release's own API, by its network alias
    assert targets["node"] == ["node-exporter:9100"]


@pytest.mark.unit
def test_alertmanager_config_passes_amtool(release: Path) -> None:
    amtool = shutil.which("amtool")
    assert amtool, "amtool is missing: scripts/dev-prereqs.sh --servers installs prometheus-alertmanager"
    checked = run(amtool, "check-config", "alertmanager.yml", cwd=release / "monitoring")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    routed = run(
        amtool,
        "config",
        "routes",
        "test",
        "--config.file=alertmanager.yml",
        "severity=critical",
        cwd=release / "monitoring",
    )
    assert routed.stdout.strip() == "relay", routed.stdout + routed.stderr


@pytest.mark.unit
def test_rule_cases_pass(release: Path, promtool: str) -> None:
    for cases in RULE_TESTS:
        shutil.copy(cases, release / "monitoring" / cases.name)
    tested = run(promtool, "test", "rules", *(cases.name for cases in RULE_TESTS), cwd=release / "monitoring")
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.unit
def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not(release: Path) -> None:
    cases = [case for path in RULE_TESTS for case in yaml.safe_load(path.read_text())["tests"]]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = alert_names(release / "monitoring" / "alerts.yml")
    assert len(alerts) == 26
    assert alerts - fires == set(), "alerts without a case where they fire"
    assert alerts - quiet == set(), "alerts without a case where they stay quiet"


@pytest.mark.unit
def test_every_alert_has_a_runbook_entry(release: Path) -> None:
    runbook = (REPO / "docs" / "runbook.md").read_text()
    document = yaml.safe_load((release / "monitoring" / "alerts.yml").read_text())
    for group in document["groups"]:
        for rule in (rule for rule in group["rules"] if "alert" in rule):
            anchor = rule["annotations"]["runbook"].split("#", 1)[1]
            assert anchor == rule["alert"].lower()
            assert f"\n### {rule['alert']}\n" in runbook, f"docs/runbook.md has no section for {rule['alert']}"


@pytest.mark.unit
def test_thresholds_follow_the_config(tmp_path: Path, promtool: str) -> None:
    extra = "\n[environments.production.monitoring]\nturn_p95_seconds = 300\n"
    config = example_config(tmp_path, extra_toml=extra)
    staging = rendered_release(config, tmp_path / "prod")
    rules = (staging / "monitoring" / "alerts.yml").read_text()
    assert "max(cvm_agents_running) >= 10\n" in rules
    assert "[10m]))) > 300\n" in rules
    # The promtool cases are written for the default thresholds: a 300 s P95 threshold makes the
    # "slow agent turns fire" case (P95 291 s) fail, so the cases really test these rules.
    shutil.copy(RULE_TESTS[0], staging / "monitoring" / "alerts_test.yml")
    tested = run(promtool, "test", "rules", "alerts_test.yml", cwd=staging / "monitoring")
    assert tested.returncode != 0
    assert "AgentTurnSlow" in tested.stdout + tested.stderr


@pytest.mark.unit
def test_backup_staleness_follows_the_schedule(tmp_path: Path) -> None:
    extra = '\n[environments.production.backup]\nschedule = "0 */6 * * *"\n'
    release = rendered_release(example_config(tmp_path, extra_toml=extra), tmp_path / "out")
    rules = (release / "monitoring" / "alerts.yml").read_text()
    assert "time() - appliance_backup_last_success_timestamp_seconds > 43200\n" in rules  # 2 x 6 h


@pytest.mark.unit
def test_monitoring_off_renders_no_monitoring(tmp_path: Path) -> None:
    extra = "\n[environments.production.monitoring]\nenabled = false\n"
    release = rendered_release(example_config(tmp_path, extra_toml=extra), tmp_path / "out")
    assert not (release / "monitoring").exists()
    assert not (release / "relay.env").exists()
    compose = (release / "docker-compose.yml").read_text()
    assert "prometheus" not in compose
    assert "relay" not in compose


@pytest.mark.unit
@pytest.mark.parametrize(
    ("schedule", "hours"),
    [
        ("30 3 * * *", 24),
        ("0 */6 * * *", 6),
        ("0 1-5 * * *", 20),  # 05:00 to 01:00 the next day
        ("0 3 * * 0", 7 * 24),  # Sundays
        ("0 3 * * 7", 7 * 24),  # 7 is Sunday too
        ("0 3 1 * *", 31 * 24),  # monthly: the longest month
        ("0 3 1,15 * 1", 7 * 24),  # both day fields restricted: either matches (every Monday, plus 1st/15th)
        ("0 3 29 2 *", 4 * 366 * 24),  # leap days only: fewer than two runs in two years
    ],
)
def test_cron_max_gap(schedule: str, hours: int) -> None:
    if hours > 2 * 366 * 24:
        with pytest.raises(ApplianceError, match="runs less than twice in two years"):
            cron_max_gap(schedule)
    else:
        assert cron_max_gap(schedule) == hours * 3600
