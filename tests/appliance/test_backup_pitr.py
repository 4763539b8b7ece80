"""Point-in-time recovery with the host-side zipapp against a real PostgreSQL started with the compose file's
own archiving command (rendered from compose/docker-compose.yml.j2), the local COS and real age: WAL pushed,
a recovery to a moment between two commits, and a damaged segment refused by name."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from appliance.backup import wal
from appliance.backup.cos import CosStore
from appliance.config import load_config
from appliance.render import release_files
from appliance.secrets import ensure_generated, load_secrets
from tests.appliance.backup_host import backup_side, flip_a_byte, sh, stack_containers
from tests.conftest import REPO

pytestmark = pytest.mark.integration

BUCKET = "pitr-1250000000"
SECRET_ID, SECRET_KEY = "AKIDpitr", "pitr-secret"
ARCHIVE_TIMEOUT = 5


@dataclass(frozen=True)
class Stack:
    project: str
    settings_file: Path
    pyz: Path
    key: str
    cos: CosStore
    postgres: str


def postgres_service(tmp_path: Path, recipient: str) -> dict[str, list[str]]:
    """The postgres service of the stack's compose file as rendered with backup.pitr on."""
    config_file = tmp_path / "appliance.toml"
    text = (REPO / "appliance.example.toml").read_text(encoding="utf-8")
    text = text.replace("[backup]\nenabled = false", f'[backup]\nenabled = true\ncos_bucket = "{BUCKET}"')
    text = text.replace("pitr = false", f'pitr = true\nage_recipient = "{recipient}"')
    config_file.write_text(text.replace("archive_timeout = 60", f"archive_timeout = {ARCHIVE_TIMEOUT}"))
    (tmp_path / "secrets.env").write_text("AI_API_KEY=sk-test\n")
    (tmp_path / "secrets.env").chmod(0o600)
    ensure_generated(tmp_path / "secrets.env", {})
    config = load_config(config_file)
    compose = next(f for f in release_files(config, load_secrets(config.secrets_path, {}), "v1") if
                   f.path.endswith("/docker-compose.yml"))  # fmt: skip
    service: dict[str, list[str]] = yaml.safe_load(compose.content)["services"]["postgres"]
    return service


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    project = f"pitr{secrets.token_hex(3)}"
    base = tmp_path_factory.mktemp("base")
    (base / "shared/wal").mkdir(parents=True)
    with backup_side(base, project, BUCKET, (SECRET_ID, SECRET_KEY), pitr=True) as side:
        service = postgres_service(tmp_path_factory.mktemp("config"), side.recipient)
        command = tuple(word.replace("$$", "$") for word in service["command"])  # Compose's escape
        spool_mount = next(v for v in service["volumes"] if v.endswith(":/var/lib/postgresql/wal"))
        assert spool_mount == "/opt/appliance/shared/wal:/var/lib/postgresql/wal"
        data, spool = f"{project}_pgdata:/var/lib/postgresql/data", f"{base}/shared/wal:/var/lib/postgresql/wal"
        options = ("--restart", "unless-stopped", "-v", data, "-v", spool)
        with stack_containers(project, *options, postgres_command=command, volumes=("pgdata",)) as (postgres, _):
            yield Stack(project, side.settings_file, side.pyz, side.key, side.cos, postgres)
        shutil.rmtree(base / "shared/wal", ignore_errors=True)


def backup_cmd(stack: Stack, *args: str, identity: str = "") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(stack.pyz), "--settings", str(stack.settings_file), *args]
    return subprocess.run(command, input=identity, capture_output=True, text=True, check=False, timeout=600)


def psql(stack: Stack, sql: str) -> str:
    return sh(f'docker exec {stack.postgres} psql -U appliance -d appliance -tAXq -c "{sql}"').strip()


def archive_until_pushed(stack: Stack, segment: str) -> None:
    """What the path unit does on a host: wal-push, until `segment` (closed by archive_timeout) is in COS."""
    deadline = time.monotonic() + 4 * ARCHIVE_TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(1)
        pushed = backup_cmd(stack, "wal-push")
        assert pushed.returncode == 0, pushed.stderr
        if any(item.key.endswith(f"/{segment}{wal.SUFFIX}") for item in stack.cos.objects("backups/")):
            return
    raise AssertionError(f"{segment} was not archived within 4 archive_timeouts")


@pytest.fixture(scope="module")
def moment(stack: Stack) -> str:
    """A base backup, row A, the moment T, row B, B's segment archived; T as the operator would type it."""
    psql(stack, "CREATE TABLE notes (body text)")
    done = backup_cmd(stack, "backup", "--reason", "base")
    assert done.returncode == 0, done.stderr
    psql(stack, "INSERT INTO notes VALUES ('A')")
    time.sleep(1)
    moment = datetime.now(timezone.utc).astimezone().isoformat(sep=" ")
    time.sleep(1)
    psql(stack, "INSERT INTO notes VALUES ('B')")
    archive_until_pushed(stack, psql(stack, "SELECT pg_walfile_name(pg_current_wal_lsn())"))
    return moment


def test_a_drill_to_a_time_replays_the_archive_to_it_and_not_past_its_end(stack: Stack, moment: str) -> None:
    """Before any restore changes the server: the base backup and the WAL replay to T in a throwaway server (the
    live one untouched), the backup is marked verified with that time; a time past the archive's end fails."""
    drilled = backup_cmd(stack, "drill", "--to-time", moment, identity=stack.key)
    assert drilled.returncode == 0, drilled.stderr
    line = drilled.stdout.strip().splitlines()[-1]
    at = datetime.fromisoformat(moment).isoformat()
    assert f"archived WAL files replayed to {at} (last commit " in line and line.endswith("; marked verified"), line
    (verified,) = [
        item.key for item in stack.cos.objects(f"backups/{stack.project}/") if item.key.endswith("verified.json")
    ]
    assert json.loads(stack.cos.get_bytes(verified))["to_time"] == at
    assert psql(stack, "SELECT string_agg(body, ',' ORDER BY body) FROM notes") == "A,B"  # the live server as it was
    assert sh(f"docker ps -aq --filter name={stack.project}-drill-").strip() == ""

    later = datetime.now(timezone.utc).astimezone().isoformat(sep=" ")
    short = backup_cmd(stack, "drill", "--to-time", later, identity=stack.key)
    assert short.returncode == 1
    assert short.stderr.strip().endswith(
        f"the archived WAL ends before {datetime.fromisoformat(later).isoformat()}: a recovery cannot reach that moment"
    ), short.stderr


def test_restore_to_a_time_brings_back_a_and_not_b(stack: Stack, moment: str) -> None:
    system = psql(stack, "SELECT system_identifier FROM pg_control_system()")
    archived = stack.cos.objects(f"backups/{stack.project}/wal/{system}/")
    assert archived and all(item.key.endswith(wal.SUFFIX) for item in archived)
    psql(stack, "INSERT INTO notes VALUES ('C')")

    restored = backup_cmd(stack, "restore", "--to-time", moment, identity=stack.key)
    assert restored.returncode == 0, restored.stderr
    assert f"PostgreSQL recovered to {datetime.fromisoformat(moment).isoformat()}" in restored.stdout
    assert psql(stack, "SELECT string_agg(body, ',' ORDER BY body) FROM notes") == "A"
    assert psql(stack, "SELECT pg_is_in_recovery()") == "f"  # promoted, writable again
    assert psql(stack, "SHOW restore_command") == ""  # the recovery's settings are gone
    psql(stack, "INSERT INTO notes VALUES ('after')")


def test_a_time_past_the_archive_replays_all_of_it(stack: Stack, moment: str) -> None:
    """PostgreSQL stops (FATAL) when the archive ends before the target; the restore then replays all of it.
    The container has the stack's restart policy, which must not start the failed recovery over and over."""
    later = datetime.now(timezone.utc).astimezone().isoformat(sep=" ")
    restored = backup_cmd(stack, "restore", "--to-time", later, identity=stack.key)
    assert restored.returncode == 0, restored.stderr
    assert "PostgreSQL recovered to the end of its archived WAL (which ends before " in restored.stdout
    assert psql(stack, "SELECT string_agg(body, ',' ORDER BY body) FROM notes") == "A,B"  # B's segment was archived
    policy = sh(f"docker inspect -f '{{{{.HostConfig.RestartPolicy.Name}}}}' {stack.postgres}").strip()
    assert policy == "unless-stopped"


def test_a_flipped_byte_in_a_segment_fails_the_restore_naming_it(stack: Stack, moment: str, tmp_path: Path) -> None:
    system = psql(stack, "SELECT system_identifier FROM pg_control_system()")  # a recovery keeps the cluster's
    names = sorted(item.key for item in stack.cos.objects(f"backups/{stack.project}/wal/{system}/"))
    segment = next(key for key in reversed(names) if wal.position(key.rsplit("/", 1)[1]) is not None)
    flip_a_byte(stack.cos, segment, tmp_path / "segment")
    before = psql(stack, "SELECT string_agg(body, ',' ORDER BY body) FROM notes")

    failed = backup_cmd(stack, "restore", "--to-time", moment, identity=stack.key)
    assert failed.returncode == 1
    name = segment.rsplit("/", 1)[1].removesuffix(wal.SUFFIX)
    assert failed.stderr.strip().startswith(f"restore failed: WAL segment {name} is damaged and cannot be replayed (")
    assert len(failed.stderr.strip().splitlines()) == 1
    assert psql(stack, "SELECT string_agg(body, ',' ORDER BY body) FROM notes") == before  # nothing was changed


def test_retention_deletes_the_wal_before_the_oldest_kept_base_backup(stack: Stack, moment: str) -> None:
    system = psql(stack, "SELECT system_identifier FROM pg_control_system()")
    manifest = json.loads(backup_cmd(stack, "list").stdout.splitlines()[0])
    start = json.loads(stack.cos.get_bytes(f"backups/{stack.project}/{manifest['id']}/manifest.json"))["wal_start"]

    def archived() -> list[str]:
        prefix = f"backups/{stack.project}/wal/{system}/"
        return sorted(item.key[len(prefix) : -len(wal.SUFFIX)] for item in stack.cos.objects(prefix))

    before = archived()
    assert wal.expired(before, start), before  # initdb's first segment at least predates the base backup
    pruned = backup_cmd(stack, "prune")
    assert pruned.returncode == 0, pruned.stderr
    assert archived() == [name for name in before if name not in wal.expired(before, start)]
    assert start in archived()
