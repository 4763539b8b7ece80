"""Point-in-time recovery's pure decisions: which archived WAL a recovery reads, which retention deletes,
the base backup's first segment, the recovery settings, the operator's time, the compose and unit files."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from appliance.backup import metrics, wal
from appliance.backup.dump import recovery_settings
from appliance.backup.errors import BackupError
from appliance.backup.install import wal_push_steps
from appliance.config import load_config
from appliance.steps import ConfigFiles
from tests.appliance.test_backup_pitr import postgres_service

pytestmark = pytest.mark.unit

ARCHIVE = [
    "00000002.history",
    "000000010000000000000003",
    "000000010000000000000004",
    "000000010000000000000004.00000028.backup",
    "000000010000000000000005",
    "000000020000000000000005",  # the timeline a recovery started, from the same place in the stream
    "000000020000000000000006",
]


def test_a_recovery_reads_every_history_file_and_every_segment_from_the_base_backups_first() -> None:
    assert wal.needed(ARCHIVE, "000000010000000000000004") == [
        "000000010000000000000004",
        "000000010000000000000004.00000028.backup",
        "000000010000000000000005",
        "00000002.history",
        "000000020000000000000005",
        "000000020000000000000006",
    ]


def test_retention_deletes_segments_before_the_oldest_kept_base_backup_and_never_history() -> None:
    assert wal.expired(ARCHIVE, "000000020000000000000005") == [
        "000000010000000000000003",
        "000000010000000000000004",
        "000000010000000000000004.00000028.backup",
    ]
    assert wal.expired(ARCHIVE, "000000010000000000000003") == []


def test_the_first_segment_comes_from_the_backup_label() -> None:
    label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n"
    assert wal.start_segment(label) == "000000010000000000000002"
    with pytest.raises(BackupError, match="names no START WAL LOCATION"):
        wal.start_segment("LABEL: x\n")


def test_a_segment_names_its_cluster_in_its_first_page(tmp_path: Path) -> None:
    segment = tmp_path / "000000010000000000000002"
    segment.write_bytes(b"\x00" * 24 + (7311983581893460051).to_bytes(8, "little") + b"\x00" * 64)
    assert wal.segment_system_id(segment) == "7311983581893460051"
    (tmp_path / "00000002.history").write_text("1\t0/3000000\tbefore 2026-12-01\n")
    assert wal.segment_system_id(tmp_path / "00000002.history") is None


def test_the_recovery_settings_name_the_target_or_replay_everything() -> None:
    assert recovery_settings("2026-12-01T10:15:00+08:00") == (
        "restore_command = 'cp pitr-wal/%f \"%p\"'\nrecovery_target_time = '2026-12-01T10:15:00+08:00'\n"
        "recovery_target_action = 'promote'\n"
    )
    assert recovery_settings(None) == "restore_command = 'cp pitr-wal/%f \"%p\"'\n"


def test_the_operators_time_needs_an_offset() -> None:
    parsed = wal.parse_moment("2026-12-01 10:15:00+08:00")
    assert parsed == datetime(2026, 12, 1, 2, 15, tzinfo=timezone.utc)
    assert parsed.utcoffset() == timedelta(hours=8)
    with pytest.raises(ValueError, match="has no UTC offset: add one, such as \\+08:00"):
        wal.parse_moment("2026-12-01 10:15:00")
    with pytest.raises(ValueError, match="is not a time such as"):
        wal.parse_moment("yesterday")


def test_postgres_archives_into_the_spool_only_with_pitr(tmp_path: Path) -> None:
    service = postgres_service(tmp_path, "age1" + "q" * 58)
    settings = dict(word.split("=", 1) for word in service["command"] if "=" in word and " " not in word)
    assert settings == {"wal_level": "replica", "archive_mode": "on", "archive_timeout": "5"}
    archive = next(word for word in service["command"] if word.startswith("archive_command="))
    assert archive.endswith("mv /var/lib/postgresql/wal/incoming/%f /var/lib/postgresql/wal/ready/%f")
    config = load_config(tmp_path / "appliance.toml")
    steps = wal_push_steps(config)
    units = next(step for step in steps if isinstance(step, ConfigFiles))
    path_unit = units.files[0].content.decode()
    assert "DirectoryNotEmpty=/opt/appliance/shared/wal/ready\n" in path_unit
    assert "ExecStart=/opt/appliance/bin/backup.sh wal-push\n" in units.files[1].content.decode()

    off = tmp_path / "off.toml"
    off.write_text((tmp_path / "appliance.toml").read_text().replace("pitr = true", "pitr = false"))
    config = load_config(off)
    assert [step.name for step in wal_push_steps(config)] == ["WAL archiving off"]


def test_the_first_backup_and_the_newest_verified_one_only_move_one_way(tmp_path: Path) -> None:
    state, textfile = tmp_path / "metrics.json", tmp_path / "backup.prom"
    first = "appliance_backup_first_success_timestamp_seconds"
    verified = "appliance_backup_last_verified_timestamp_seconds"
    metrics.record(state, textfile, {first: 100, verified: 500})
    values = metrics.record(state, textfile, {first: 200, verified: 300})  # a later backup; an older one drilled
    assert values[first] == 100 and values[verified] == 500
    assert metrics.record(state, textfile, {verified: 900})[verified] == 900
    assert f"{verified} 900\n" in textfile.read_text()
