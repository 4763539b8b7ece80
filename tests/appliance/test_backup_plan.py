"""Backups' pure decisions: retention against a frozen clock, the manifest, metrics, the host bundle."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from datetime import datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path

import pytest

from appliance.backup import metrics
from appliance.backup.__main__ import _backup_metrics
from appliance.backup.install import bundle, host_settings
from appliance.backup.manifest import Manifest, Part, backup_id, count_copy_rows, id_time
from appliance.backup.retention import Stored, decide, horizon_days
from appliance.backup.settings import HostSettings, Policy
from appliance.config import load_config
from appliance.errors import ConfigError
from appliance.render import render_template

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)  # a Monday


def daily_backups(days: int, verified_on: set[int] = frozenset()) -> list[Stored]:  # type: ignore[assignment]
    """One backup a day at 03:30 for `days` days up to today; days back in `verified_on` were drilled."""
    found = []
    for back in range(days):
        when = (NOW - timedelta(days=back)).replace(hour=3, minute=30)
        found.append(Stored(backup_id(when), when, complete=True, verified=back in verified_on))
    return found


def test_retention_keeps_7_daily_4_weekly_6_monthly_by_the_calendar() -> None:
    backups = daily_backups(400)
    decision = decide(backups, NOW, Policy(daily=7, weekly=4, monthly=6))
    kept = sorted(decision.keep)
    dailies = [f"202611{d}T033000Z" for d in range(17, 24)]
    # Newest of each ISO week: this week's is today's; the three before end on Sundays 22, 15, 8 Nov.
    weeklies = ["20261108T033000Z", "20261115T033000Z", "20261122T033000Z"]
    # Newest of each month: Nov (today), Oct 31, Sep 30, Aug 31, Jul 31, Jun 30.
    monthlies = ["20260630T033000Z", "20260731T033000Z", "20260831T033000Z", "20260930T033000Z", "20261031T033000Z"]
    assert kept == sorted({*dailies, *weeklies, *monthlies})
    assert len(decision.keep) + len(decision.delete) == 400


def test_the_lifecycle_horizon_never_takes_what_the_calendar_keeps() -> None:
    """inv cos.setup expires objects after horizon_days: on every day of a year (months of 28 to 31 days), with a
    backup a day or only one on each month's first day, every backup the calendar keeps is younger than that."""
    for policy in (Policy(), Policy(daily=7, weekly=8, monthly=0), Policy(daily=30, weekly=0, monthly=0)):
        oldest_kept = 0.0
        for day in range(0, 365, 3):
            now = NOW + timedelta(days=day)
            times = [(now - timedelta(days=back)).replace(hour=3, minute=30) for back in range(400)]
            for schedule in (times, [when for when in times if when.day == 1]):
                backups = [Stored(backup_id(when), when, complete=True, verified=False) for when in schedule]
                keep = set(decide(backups, now, policy).keep)
                ages = [(now - b.created).total_seconds() / 86400 for b in backups if b.id in keep]
                oldest_kept = max(oldest_kept, *ages)
        assert oldest_kept < horizon_days(policy), (policy, oldest_kept)
    assert horizon_days(Policy()) == 187


def test_retention_never_deletes_the_newest_verified_backup() -> None:
    backups = daily_backups(60, verified_on={40})
    decision = decide(backups, NOW, Policy(daily=2, weekly=0, monthly=1))
    verified = backup_id((NOW - timedelta(days=40)).replace(hour=3, minute=30))
    assert verified in decision.keep
    assert decision.keep == sorted(decision.keep)  # oldest first
    assert set(decision.keep) == {verified, "20261122T033000Z", "20261123T033000Z"}


def test_retention_keeps_the_newest_even_when_it_is_old_and_young_incomplete_uploads() -> None:
    old = NOW - timedelta(days=500)
    backups = [
        Stored(backup_id(old), old, complete=True, verified=False),
        Stored(backup_id(old - timedelta(days=1)), old - timedelta(days=1), complete=True, verified=False),
        Stored(backup_id(NOW - timedelta(hours=1)), NOW - timedelta(hours=1), complete=False, verified=False),
        Stored(backup_id(NOW - timedelta(days=2)), NOW - timedelta(days=2), complete=False, verified=False),
    ]
    decision = decide(backups, NOW, Policy())
    assert decision.keep == [backup_id(old), backup_id(NOW - timedelta(hours=1))]
    assert decision.delete == [backup_id(old - timedelta(days=1)), backup_id(NOW - timedelta(days=2))]


def test_backup_ids_are_utc_times() -> None:
    shanghai = timezone(timedelta(hours=8))
    assert backup_id(datetime(2026, 11, 24, 3, 30, tzinfo=shanghai)) == "20261123T193000Z"
    assert id_time("20261123T193000Z") == datetime(2026, 11, 23, 19, 30, tzinfo=timezone.utc)
    assert id_time("latest") is None


def test_row_counts_come_from_the_dump_copy_blocks() -> None:
    sql = [
        "SET statement_timeout = 0;\n",
        "COPY public.users (id, email) FROM stdin;\n",
        "1\ta@example.com\n",
        "2\tb@example.com\n",
        "\\.\n",
        'COPY public."Odd Name" (id) FROM stdin;\n',
        "\\.\n",
        "COPY public.messages (id, body) FROM stdin;\n",
        "1\tCOPY public.x FROM stdin;\n",
        "\\.\n",
    ]
    assert count_copy_rows(sql) == {"public.users": 2, 'public."Odd Name"': 0, "public.messages": 1}


def test_manifest_round_trips_through_json() -> None:
    part = Part("postgres", "postgres.dump.age", 10, "a" * 64, 250, "b" * 64, "123")
    manifest = Manifest(
        id="20261123T193000Z", created="2026-11-23T19:30:00+00:00", host="cvm", name="appliance",
        reason="cron", release="v1", versions={"postgres": "15.8"}, parts=[part], tables={"public.users": 2},
        redis_keys=3, redis_sample={"k": "string"}, files={"a/b.txt": "c" * 64},
    )  # fmt: skip
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.encrypted_size == 250


def test_metrics_textfile_merges_backup_and_drill_runs(tmp_path: Path) -> None:
    state, textfile = tmp_path / "state.json", tmp_path / "metrics" / "backup.prom"
    metrics.record(state, textfile, {"appliance_backup_last_run_success": 1, "appliance_backup_last_size_bytes": 2e9})
    metrics.record(state, textfile, {"appliance_backup_drill_last_success": 0,
                                     "appliance_backup_drill_last_run_timestamp_seconds": 1764590123.25})  # fmt: skip
    text = textfile.read_text()
    assert "appliance_backup_last_size_bytes 2000000000\n" in text
    assert "appliance_backup_drill_last_run_timestamp_seconds 1764590123.25\n" in text  # to the second and below
    assert "appliance_backup_last_run_success 1\n" in text
    assert "appliance_backup_drill_last_success 0\n" in text
    assert "# TYPE appliance_backup_drill_last_success gauge" in text
    assert not list(textfile.parent.glob(".*.tmp"))
    promtool = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr


CONFIG = """
[backup]
enabled = true
cos_bucket = "backups-1250000000"
cos_endpoint = "http://172.17.0.1:9000"
age_recipient = "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq"
[environments.production]
[[environments.production.hosts]]
address = "203.0.113.7"
"""


def test_host_settings_need_the_cos_key_in_the_secrets(tmp_path: Path) -> None:
    (tmp_path / "appliance.toml").write_text(CONFIG)
    config = load_config(tmp_path / "appliance.toml")
    with pytest.raises(ConfigError, match="backups are enabled: set COS_SECRET_ID and COS_SECRET_KEY"):
        host_settings(config, {})
    settings = host_settings(config, {"COS_SECRET_ID": "id", "COS_SECRET_KEY": "key"})
    assert HostSettings.from_json(settings.to_json()) == settings
    assert settings.key_prefix == "backups/appliance/"
    assert settings.cos.part_size == 16 * 1024 * 1024


def test_the_bundle_is_reproducible_and_runs_from_the_zip(tmp_path: Path) -> None:
    first = bundle()
    assert first == bundle()
    names = zipfile.ZipFile(BytesIO(first)).namelist()
    assert "qcloud_cos/cos_client.py" in names and "appliance/backup/runner.py" in names
    assert "appliance/backup/install.py" not in names  # operator-side code stays home
    (tmp_path / "backup.pyz").write_bytes(first)
    settings = tmp_path / "missing.json"
    run = subprocess.run(
        [sys.executable, str(tmp_path / "backup.pyz"), "--settings", str(settings), "list"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert run.returncode == 1
    assert (
        run.stderr.strip() == f"list failed: {settings} not found: enable [backup] in the config and run inv bootstrap"
    )


def test_retention_keeps_every_backup_of_the_last_day_then_one_per_day() -> None:
    times = [NOW - timedelta(hours=h) for h in (1, 5, 23, 25, 26)]  # the last three are all on 22 Nov
    backups = [Stored(backup_id(t), t, complete=True, verified=False) for t in times]
    decision = decide(backups, NOW, Policy(daily=7, weekly=0, monthly=0))
    # All of the last 24 h stay (two today, 22 Nov's newest); 22 Nov's older ones go.
    assert decision.keep == [backup_id(t) for t in reversed(times[:3])]
    assert decision.delete == [backup_id(times[4]), backup_id(times[3])]


def inv_in(folder: Path, *args: str, answer: str = "") -> subprocess.CompletedProcess[str]:
    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "invoke", "-r", str(repo), *args, "--config", str(folder / "appliance.toml")]
    return subprocess.run(command, input=answer, capture_output=True, text=True, check=False, timeout=60)


def test_restore_asks_first_and_needs_the_key_before_touching_the_host(tmp_path: Path) -> None:
    """Both refusals come before any connection (the host in the config does not exist)."""
    (tmp_path / "appliance.toml").write_text(CONFIG.replace("203.0.113.7", "192.0.2.1"))
    cancelled = inv_in(tmp_path, "restore", "--backup", "20261123T033000Z", answer="no\n")
    assert cancelled.returncode == 4
    assert cancelled.stderr.strip() == "error: restore cancelled: nothing was changed"
    no_key = inv_in(tmp_path, "restore", "--backup", "20261123T033000Z", "--yes")
    assert no_key.returncode == 2
    assert no_key.stderr.strip() == (
        f"error: {tmp_path / 'appliance.toml'}: backup.age_identity_file: set it to your age private key file"
    )


def test_redis_only_backups_live_a_day_and_never_displace_the_full_ones() -> None:
    full = daily_backups(10)
    hourly = [NOW - timedelta(hours=h, minutes=15) for h in range(0, 48, 4)]
    redis = [Stored(backup_id(t), t, complete=True, verified=False, scope="redis") for t in hourly]
    decision = decide([*full, *redis], NOW, Policy(daily=3, weekly=0, monthly=0))
    # Full: the newest of each of the last 3 days (calendar), whatever Redis-only backups those days hold.
    assert {b.id for b in full if b.id in decision.keep} == {f"202611{d}T033000Z" for d in (21, 22, 23)}
    # Redis-only: those of the last 24 h; older ones go, even on days whose full backup stays.
    assert {b.id for b in redis if b.id in decision.keep} == {
        backup_id(t) for t in hourly if NOW - t < timedelta(days=1)
    }
    # With none from the last day, the newest Redis-only backup still stays.
    old = [b for b in redis if NOW - b.created > timedelta(days=1)]
    kept = decide([*full, *old], NOW, Policy(daily=3, weekly=0, monthly=0)).keep
    assert [b.id for b in old if b.id in kept] == [old[0].id]


def test_redis_only_runs_have_their_own_metrics(tmp_path: Path) -> None:
    state, textfile = tmp_path / "state.json", tmp_path / "backup.prom"
    metrics.record(state, textfile, _backup_metrics("full", 0.0, 100))
    metrics.record(state, textfile, _backup_metrics("redis", 0.0, None))
    text = textfile.read_text()
    assert "appliance_backup_last_run_success 1\n" in text  # a failed Redis-only run does not hide a good full one
    assert "appliance_backup_redis_last_run_success 0\n" in text
    assert "appliance_backup_redis_last_success_timestamp_seconds" not in text


def test_a_redis_schedule_adds_its_own_cron_line(tmp_path: Path) -> None:
    (tmp_path / "appliance.toml").write_text(
        CONFIG.replace("enabled = true", 'enabled = true\nredis_schedule = "15 * * * *"')
    )
    settings = load_config(tmp_path / "appliance.toml").settings
    context = {"header": "h", "base_dir": settings.base_dir, "backup": settings.backup, "name": settings.name}
    cron = render_template("systemd/backup.cron.j2", context)
    entries = [line for line in cron.splitlines() if line and not line.startswith(("#", "SHELL", "PATH"))]
    assert entries == [
        "30 3 * * * root /opt/appliance/bin/backup.sh --reason cron >/dev/null",
        "15 * * * * root /opt/appliance/bin/backup.sh --reason cron --only redis >/dev/null",
    ]
    (tmp_path / "appliance.toml").write_text(
        CONFIG.replace("enabled = true", 'enabled = true\nredis_schedule = "hourly"')
    )
    with pytest.raises(ConfigError, match=r"backup\.redis_schedule: .*5-field cron"):
        load_config(tmp_path / "appliance.toml")
