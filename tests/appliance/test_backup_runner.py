"""The host-side backup program (the zipapp bootstrap installs) against real PostgreSQL and Redis
containers labelled like the stack's, the local COS and real age: backup, restore, drill, failures."""

from __future__ import annotations

import fcntl
import json
import resource
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.backup.cos import CosStore
from tests.appliance.backup_host import backup_side, sh, stack_containers
from tests.cosfake import FakeCos

pytestmark = pytest.mark.integration

BUCKET = "runner-1250000000"
SECRET_ID, SECRET_KEY = "AKIDrunner", "runner-secret"


@dataclass(frozen=True)
class Stack:
    project: str
    base: Path
    settings_file: Path
    pyz: Path
    key: str
    fake: FakeCos
    cos: CosStore
    postgres: str
    redis: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    project = f"bkit{secrets.token_hex(3)}"
    base = tmp_path_factory.mktemp("base")
    (base / "releases/v1").mkdir(parents=True)
    (base / "releases/v1/slug").write_text("v1\n")
    (base / "current").symlink_to(base / "releases/v1")
    with backup_side(base, project, BUCKET, (SECRET_ID, SECRET_KEY)) as side, stack_containers(project) as containers:
        yield Stack(project, base, side.settings_file, side.pyz, side.key, side.fake, side.cos, *containers)


def backup_cmd(stack: Stack, *args: str, identity: str = "") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(stack.pyz), "--settings", str(stack.settings_file), *args]
    return subprocess.run(command, input=identity, capture_output=True, text=True, check=False, timeout=600)


def psql(stack: Stack, sql: str) -> str:
    return sh(f"docker exec {stack.postgres} psql -U appliance -d appliance -tAXq -c {json.dumps(sql)}")


def redis(stack: Stack, *args: str) -> str:
    return sh(f"docker exec {stack.redis} redis-cli -a pw --no-auth-warning {' '.join(args)}").strip()


def artifacts(stack: Stack) -> Path:
    return Path(sh(f"docker volume inspect -f '{{{{.Mountpoint}}}}' {stack.project}_artifacts").strip())


def state(stack: Stack) -> tuple[str, str, str]:
    rows = psql(stack, "SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY id)) FROM items t")
    keys = redis(stack, "--scan") and " ".join(sorted(redis(stack, "--scan").split()))
    files = sh(f"cd {artifacts(stack)} && find . -type f -print0 | sort -z | xargs -0 -r sha256sum")
    return rows, keys + "|" + redis(stack, "GET", "k7") + "|" + redis(stack, "LRANGE", "list", "0", "-1"), files


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> tuple[str, tuple[str, str, str]]:
    psql(stack, "CREATE TABLE items (id serial PRIMARY KEY, body text); "
                "INSERT INTO items (body) SELECT md5(n::text) FROM generate_series(1, 5000) n")  # fmt: skip
    for n in range(20):
        redis(stack, "SET", f"k{n}", f"v{n}")
    redis(stack, "RPUSH", "list", "a", "b", "c")
    sh(f"cd {artifacts(stack)} && mkdir -p u/1 && head -c 2500000 /dev/urandom > u/1/big && echo hi > u/small")
    done = backup_cmd(stack, "backup", "--reason", "test")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("backup ") and " ok: " in line and "(reason test)" in line
    return line.split()[1], state(stack)


def test_backup_restore_and_drill_round_trip(stack: Stack, seeded: tuple[str, tuple[str, str, str]]) -> None:
    identifier, before = seeded
    manifest = json.loads(stack.cos.get_bytes(f"backups/{stack.project}/{identifier}/manifest.json"))
    assert manifest["tables"] == {"public.items": 5000}
    assert manifest["redis_keys"] == 21 and manifest["release"] == "v1"
    assert {p["name"] for p in manifest["parts"]} == {"postgres", "redis", "redis-aof", "files", "state"}
    assert set(manifest["files"]) == {"u/1/big", "u/small"}
    # Damage everything, then restore.
    psql(stack, "DELETE FROM items WHERE id % 2 = 0")
    redis(stack, "FLUSHALL")
    sh(f"rm -rf {artifacts(stack)}/u && echo new > {artifacts(stack)}/other")
    assert state(stack) != before
    restored = backup_cmd(stack, "restore", "--id", identifier, identity=stack.key)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.strip() == f"restored {identifier} (full): 1 tables, 5000 rows, 21 redis keys, 2 files"
    assert state(stack) == before
    drilled = backup_cmd(stack, "drill", identity=stack.key)
    assert drilled.returncode == 0, drilled.stderr
    assert f"drill of {identifier} passed" in drilled.stdout
    listed = [json.loads(line) for line in backup_cmd(stack, "list").stdout.splitlines()]
    assert [(b["id"], b["complete"], b["verified"]) for b in listed] == [(identifier, True, True)]
    metrics = (stack.base / "shared/metrics/backup.prom").read_text()
    assert "appliance_backup_drill_last_success 1" in metrics and "appliance_backup_last_run_success 1" in metrics
    assert not sh(f"docker ps -aq --filter name={stack.project}-drill").strip()  # throwaways removed


def test_restore_and_drill_refuse_without_the_key(stack: Stack, seeded: tuple[str, tuple[str, str, str]]) -> None:
    identifier, _ = seeded
    other = sh("age-keygen 2>/dev/null")
    wrong = backup_cmd(stack, "drill", "--id", identifier, identity=other)
    assert wrong.returncode == 1
    assert wrong.stderr.strip().splitlines()[-1].startswith("drill failed: decrypting ")
    assert "no identity matched" in wrong.stderr
    missing = backup_cmd(stack, "restore", "--id", identifier)
    assert (
        missing.stderr.strip()
        == "restore failed: no age identity on standard input (expected an AGE-SECRET-KEY-… line)"
    )


def objects(stack: Stack) -> list[str]:
    return [item.key for item in stack.cos.objects(f"backups/{stack.project}/")]


def test_failures_are_one_line_leave_earlier_backups_and_no_temporary_files(
    stack: Stack, seeded: tuple[str, tuple[str, str, str]]
) -> None:
    before = objects(stack)
    # Wrong COS key: refused before anything is dumped.
    good = stack.settings_file.read_text()
    stack.settings_file.write_text(good.replace(SECRET_KEY, "wrong-key"))
    try:
        refused = backup_cmd(stack, "backup")
    finally:
        stack.settings_file.write_text(good)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"backup failed: COS bucket {BUCKET}: list bucket: SignatureDoesNotMatch (403): check COS_SECRET_KEY"
    )
    # COS failing every attempt at one part, half-way through the uploads.
    stack.fake.shim.faults.fail_part[2] = 100
    try:
        flaky = backup_cmd(stack, "backup")
    finally:
        stack.fake.shim.faults.fail_part[2] = 0
    assert flaky.returncode == 1
    assert "upload part 2 of" in flaky.stderr and "ServiceUnavailable (503)" in flaky.stderr
    # A dump that fails: the database is gone.
    psql(stack, "SELECT 1")
    sh(f"docker exec {stack.postgres} psql -U appliance -d postgres -qc 'ALTER DATABASE appliance RENAME TO gone'")
    try:
        broken = backup_cmd(stack, "backup")
    finally:
        sh(f"docker exec {stack.postgres} psql -U appliance -d postgres -qc 'ALTER DATABASE gone RENAME TO appliance'")
    assert broken.returncode == 1
    assert broken.stderr.strip().startswith("backup failed: pg_dump failed: ")
    assert objects(stack) == before  # earlier backups untouched, nothing of the failed runs left
    assert sorted(p.name for p in (stack.base / "shared/backups").iterdir()) == [
        ".lock" if False else "backup.log",
        "latest",
        "metrics.json",
    ]
    metrics = (stack.base / "shared/metrics/backup.prom").read_text()
    assert "appliance_backup_last_run_success 0" in metrics
    log = (stack.base / "shared/backups/backup.log").read_text().splitlines()
    assert log[-1].endswith(broken.stderr.strip())


def test_backup_sh_runs_one_at_a_time_and_passes_its_arguments(stack: Stack, seeded: object) -> None:
    """scripts/backup.sh as installed (BASE/bin, BASE/lib/backup.pyz), python3 being the venv's."""
    (stack.base / "bin").mkdir(exist_ok=True)
    (stack.base / "lib").mkdir(exist_ok=True)
    script = stack.base / "bin/backup.sh"
    script.write_bytes((Path(__file__).resolve().parents[2] / "scripts/backup.sh").read_bytes())
    script.chmod(0o755)
    (stack.base / "lib/backup.pyz").write_bytes(stack.pyz.read_bytes())
    env = f"PATH={Path(sys.executable).parent}:/usr/bin:/bin"
    lock = stack.base / "shared/backups/.lock"
    with lock.open("a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another run holds the lock
        busy = subprocess.run(
            ["env", env, str(script), "--reason", "cron"], capture_output=True, text=True, check=False
        )
    assert busy.returncode == 75
    assert busy.stderr.strip() == f"backup: another backup, restore or drill is running (lock {lock})"
    listed = subprocess.run(["env", env, str(script), "list"], capture_output=True, text=True, check=False)
    assert listed.returncode == 0 and '"complete": true' in listed.stdout
    done = subprocess.run(["env", env, str(script), "--reason", "cron"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 1 and "(reason cron)" in done.stdout


def test_an_upload_that_gives_up_is_resumed_once_and_the_backup_succeeds(stack: Stack, seeded: object) -> None:
    stack.fake.shim.faults.fail_part[2] = 5  # 4 attempts fail, then the resumed upload's first try too
    try:
        done = backup_cmd(stack, "backup", "--reason", "resume")
    finally:
        stack.fake.shim.faults.fail_part[2] = 0
    assert done.returncode == 0, done.stderr
    assert "files.tar.age gave up" in done.stderr and "resuming it once" in done.stderr
    assert "resuming upload of" in done.stderr and "1 part(s) already there" in done.stderr
    assert "(reason resume)" in done.stdout


def test_a_full_disk_fails_in_one_line_and_leaves_nothing(stack: Stack, seeded: object) -> None:
    """Writes beyond 1 MB fail (RLIMIT_FSIZE: EFBIG, the way ENOSPC fails a write half-way)."""
    before = objects(stack)

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))

    command = [sys.executable, str(stack.pyz), "--settings", str(stack.settings_file), "backup"]
    full = subprocess.run(command, capture_output=True, text=True, check=False, preexec_fn=small_disk, timeout=300)
    assert full.returncode == 1
    line = full.stderr.strip().splitlines()[-1]
    # The first write past the limit: tar, killed by SIGXFSZ (ENOSPC would make it say so instead).
    assert line.startswith("backup failed: tar of ") and line.endswith("failed: killed by SIGXFSZ"), full.stderr
    assert objects(stack) == before
    assert not [p for p in (stack.base / "shared/backups").iterdir() if p.name.startswith("work-")]
    assert "appliance_backup_last_run_success 0" in (stack.base / "shared/metrics/backup.prom").read_text()


def test_a_redis_only_backup_restores_redis_alone_and_a_drill_still_proves_a_full_one(
    stack: Stack, seeded: object
) -> None:
    redis(stack, "SET", "hourly", "one")
    keys = int(redis(stack, "DBSIZE"))
    done = backup_cmd(stack, "backup", "--reason", "cron", "--only", "redis")
    assert done.returncode == 0, done.stderr
    assert "(reason cron, redis only)" in done.stdout
    identifier = done.stdout.split()[1]
    manifest = json.loads(stack.cos.get_bytes(f"backups/{stack.project}/{identifier}/manifest.json"))
    assert (manifest["scope"], manifest["tables"], manifest["files"]) == ("redis", {}, {})
    assert {part["name"] for part in manifest["parts"]} == {"redis", "redis-aof"}
    listed = [json.loads(line) for line in backup_cmd(stack, "list").stdout.splitlines()]
    assert {item["id"]: item["scope"] for item in listed}[identifier] == "redis"
    # Redis moves on, and so does PostgreSQL: restoring the Redis-only backup rewinds Redis alone.
    rows = psql(stack, "INSERT INTO items (body) VALUES ('after the redis backup'); SELECT count(*) FROM items")
    files = sh(f"cd {artifacts(stack)} && find . -type f | sort")
    redis(stack, "DEL", "hourly")
    redis(stack, "SET", "later", "two")
    restored = backup_cmd(stack, "restore", "--id", identifier, identity=stack.key)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.strip() == f"restored {identifier} (redis): 0 tables, 0 rows, {keys} redis keys, 0 files"
    assert (redis(stack, "GET", "hourly"), redis(stack, "EXISTS", "later")) == ("one", "0")
    assert psql(stack, "SELECT count(*) FROM items") == rows
    assert sh(f"cd {artifacts(stack)} && find . -type f | sort") == files
    drilled = backup_cmd(stack, "drill", identity=stack.key)
    assert drilled.returncode == 0, drilled.stderr
    assert identifier not in drilled.stdout and " tables, " in drilled.stdout  # the newest full backup


@pytest.mark.parametrize("refusal", ["request", "keys"])
def test_under_the_no_delete_policy_the_backup_succeeds_and_says_cos_expires_instead(
    stack: Stack, seeded: object, refusal: str
) -> None:
    """inv cos.setup's CAM policy gives the host no delete: COS refuses (the fake by a switch, whole request or
    key by key) and the backup job still succeeds, its line saying who deletes instead; nothing is half-deleted."""
    stale = f"backups/{stack.project}/20200101T000000Z/postgres.dump.age"  # incomplete and years old: due to go
    stack.cos.put_bytes(stale, b"left by a run that died")
    stack.fake.shim.faults.deny_delete = refusal
    try:
        done = backup_cmd(stack, "backup", "--reason", "no-delete")
        pruned = backup_cmd(stack, "prune")
    finally:
        stack.fake.shim.faults.deny_delete = None
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("backup ") and " ok: " in line, line
    assert line.endswith(
        "deleted none: COS refused the deletes (AccessDenied: the host's key has no delete, as inv cos.setup's "
        "policy says); the bucket's lifecycle rule expires them after 187 days"
    ), line
    assert "appliance_backup_last_run_success 1" in (stack.base / "shared/metrics/backup.prom").read_text()
    assert pruned.returncode == 0, pruned.stderr
    assert "would have deleted 20200101T000000Z, but COS refused the deletes" in pruned.stdout
    assert stale in objects(stack)
    allowed = backup_cmd(stack, "prune")  # a key that may delete: the same prune removes it
    assert "deleted 20200101T000000Z" in allowed.stdout, allowed.stdout + allowed.stderr
    assert stale not in objects(stack)
