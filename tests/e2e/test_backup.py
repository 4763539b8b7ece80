"""Backups end to end on the destructive sandbox (tests/e2e/conftest.py; they wipe volumes): seed → the
cron entry's backup.sh → objects in the local COS → volumes wiped → `inv restore` → every row, key and
file as before; `inv restore.drill` marks a backup verified, a flipped byte fails it; without the key,
nothing reads."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.backup.cos import MB
from appliance.remote import RemoteHost, open_host
from appliance.shell import sh
from tests.appliance.backup_host import flip_a_byte
from tests.conftest import inv
from tests.e2e.conftest import BUCKET, REDIS_SCHEDULE, SECRET_KEY, Rig

pytestmark = pytest.mark.e2e

BASE = "/opt/appliance"
PROJECT = "appliance"
MARKER = "backup-seed-marker-7f3a"


@pytest.fixture()
def host(rig: Rig) -> Iterator[RemoteHost]:
    with open_host(rig.config) as remote:
        yield remote


def run(host: RemoteHost, command: str, timeout: int = 300) -> str:
    result = host.run(command, timeout=timeout)
    assert result.exit_code == 0, f"{command}: {result.stdout}{result.stderr}"
    return result.stdout


def exec_in(service: str, command: str) -> str:
    """A shell command inside the stack's container of `service`."""
    container = (
        f"$(docker ps -q --filter label=com.docker.compose.project={PROJECT} "
        f"--filter label=com.docker.compose.service={service})"
    )
    return f"docker exec {container} sh -c {sh(command)}"


PSQL = "psql -U appliance -d appliance -tAX"
REDIS = 'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli'
ARTIFACTS = f"$(docker volume inspect -f '{{{{.Mountpoint}}}}' {PROJECT}_artifacts)"

SEED_SQL = f"""
INSERT INTO users (email, password_hash) SELECT 'seed' || n || '@example.com', '{MARKER}' FROM generate_series(1, 60) n;
INSERT INTO discussions (user_id, topic, panel, max_rounds, token_budget, status)
  SELECT id, 'topic of ' || email, ARRAY['a', 'b'], 3, 1000, 'finished' FROM users WHERE email LIKE 'seed%';
INSERT INTO messages (discussion_id, user_id, turn_index, round, role, status, content)
  SELECT d.id, d.user_id, t, 1, 'agent', 'done', repeat(md5(d.id::text || t), 40)
  FROM discussions d, generate_series(1, 30) t;
"""  # noqa: S608


def seed(host: RemoteHost) -> None:
    run(host, exec_in("postgres", f"{PSQL} <<'SQL'\n{SEED_SQL}\nSQL"))
    redis = "; ".join(
        [f"{REDIS} SET seed:str:{n} value-{n} >/dev/null" for n in range(40)]
        + [f"{REDIS} HSET seed:hash f1 v1 f2 v2 >/dev/null", f"{REDIS} RPUSH seed:list a b c >/dev/null",
           f"{REDIS} XADD seed:stream '*' k v >/dev/null", f"{REDIS} ZADD seed:zset 1 one 2 two >/dev/null"]
    )  # fmt: skip
    run(host, exec_in("redis", redis))
    run(host, f"cd {ARTIFACTS} && mkdir -p seed/deep && head -c 3000000 /dev/urandom > seed/big.bin "
              f"&& echo {MARKER} > seed/deep/note.txt && chown -R 10001:10001 seed")  # fmt: skip


def snapshot(host: RemoteHost) -> dict[str, str]:
    """Per table: rows and a checksum of them; every Redis key with its type and value; every file's hash."""
    listing = "SELECT tablename FROM pg_tables WHERE schemaname='public'"
    tables = run(host, exec_in("postgres", f'{PSQL} -c "{listing}"'))
    state: dict[str, str] = {}
    for table in sorted(tables.split()):
        rows = "count(*) || ' ' || md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
        query = f"SELECT {rows} FROM {table} t"  # noqa: S608 - names from pg_tables
        state[f"table {table}"] = run(host, exec_in("postgres", f'{PSQL} -c "{query}"')).strip()
    dump_keys = (
        f"for k in $({REDIS} --scan | sort); do t=$({REDIS} TYPE $k); case $t in "
        f"string) v=$({REDIS} GET $k);; hash) v=$({REDIS} HGETALL $k);; list) v=$({REDIS} LRANGE $k 0 -1);; "
        f"set) v=$({REDIS} SMEMBERS $k | sort);; zset) v=$({REDIS} ZRANGE $k 0 -1 WITHSCORES);; "
        f'stream) v=$({REDIS} XRANGE $k - +);; *) v=?;; esac; echo "$k $t $v"; done'
    )
    state["redis"] = run(host, exec_in("redis", dump_keys))
    state["files"] = run(host, f"cd {ARTIFACTS} && find . -type f -print0 | sort -z | xargs -0 -r sha256sum")
    return state


def wipe(host: RemoteHost) -> None:
    """Every volume of the stack gone (and the WAL spool, the local copy of the newest backup), the stack
    started again empty: what a lost disk leaves once the appliance is deployed anew."""
    slug = run(host, f"cat {BASE}/current/slug").strip()
    run(host, f"cd {BASE}/current && {BASE}/bin/compose -p {PROJECT}-api-{slug} -f api.yml down "
              f"&& {BASE}/bin/compose -p {PROJECT} -f docker-compose.yml down -v")  # fmt: skip
    assert not run(host, f"docker volume ls -q --filter name={PROJECT}_").strip()
    run(host, f"rm -rf {BASE}/shared/wal/incoming {BASE}/shared/wal/ready {BASE}/shared/backups/latest")
    run(host, f"{BASE}/bin/stack.sh {PROJECT} up", timeout=600)
    run(
        host,
        f"for _ in $(seq 60); do {exec_in('postgres', 'pg_isready -q -h 127.0.0.1')} && exit 0; sleep 1; done; exit 1",
    )


@pytest.fixture(scope="module")
def cron_backup(rig: Rig) -> tuple[str, dict[str, str]]:
    """Seed, then let cron run the installed entry (its schedule moved to every minute); (id, snapshot)."""
    with open_host(rig.config) as host:
        seed(host)
        before = snapshot(host)
        cron = f"/etc/cron.d/{PROJECT}-backup"
        original = run(host, f"cat {cron}")
        assert f"{BASE}/bin/backup.sh --reason cron >" in original
        assert f"{REDIS_SCHEDULE} root {BASE}/bin/backup.sh --reason cron --only redis >" in original
        run(host, f"sed -i 's|^30 3 \\* \\* \\* root|* * * * * root|' {cron}")
        try:
            deadline = time.monotonic() + 150
            line = ""
            while time.monotonic() < deadline and "(reason cron)" not in line:
                time.sleep(3)
                line = host.run(f"grep -h 'ok: ' {BASE}/shared/backups/backup.log | tail -n 1").stdout
        finally:
            run(host, f"sed -i 's|^\\* \\* \\* \\* \\* root|30 3 * * * root|' {cron}")
        assert "(reason cron)" in line, host.run(f"cat {BASE}/shared/backups/backup.log").stdout
        run(host, f"flock {BASE}/shared/backups/.lock true")  # a run that started meanwhile is over
    identifier = line.split("backup ", 1)[1].split()[0]
    return identifier, before


def test_cron_backup_is_in_cos_with_a_manifest_and_a_local_copy(rig: Rig, cron_backup: tuple[str, dict[str, str]],
                                                                 host: RemoteHost) -> None:  # fmt: skip
    identifier, _ = cron_backup
    keys = {item.key.rsplit("/", 1)[1]: item.size for item in rig.cos.objects(f"backups/{PROJECT}/{identifier}/")}
    assert {"manifest.json", "postgres.dump.age", "redis.rdb.age", "files.tar.age", "state.tar.age"} <= set(keys)
    assert keys["files.tar.age"] > 2 * MB  # the 3 MB artifact went up in 1 MB parts
    manifest = rig.cos.get_bytes(f"backups/{PROJECT}/{identifier}/manifest.json").decode()
    assert '"public.messages": 1800' in manifest and '"reason": "cron"' in manifest
    local = run(host, f"ls {BASE}/shared/backups/latest").split()
    assert sorted(local) == sorted(name for name in keys if name != "verified.json")
    metrics = run(host, f"cat {BASE}/shared/metrics/backup.prom")
    assert "appliance_backup_last_run_success 1" in metrics
    assert not run(host, f"ls {BASE}/shared/backups | grep work- || true").strip()


def test_backups_are_unreadable_without_the_private_key(rig: Rig, cron_backup: tuple[str, dict[str, str]],
                                                         tmp_path: Path) -> None:  # fmt: skip
    identifier, _ = cron_backup
    sealed = tmp_path / "postgres.dump.age"
    rig.cos.get_file(f"backups/{PROJECT}/{identifier}/postgres.dump.age", sealed)
    assert MARKER.encode() not in sealed.read_bytes()
    subprocess.run(["age-keygen", "-o", str(tmp_path / "other.txt")], check=True, capture_output=True)
    wrong = subprocess.run(["age", "-d", "-i", str(tmp_path / "other.txt"), str(sealed)], capture_output=True)
    assert wrong.returncode != 0 and b"no identity matched" in wrong.stderr
    key = rig.config.resolve(rig.config.settings.backup.age_identity_file or "")
    right = subprocess.run(["age", "-d", "-i", str(key), str(sealed)], capture_output=True, check=True)
    assert right.stdout.startswith(b"PGDMP")  # pg_dump's custom format


def test_wiped_volumes_come_back_with_inv_restore(rig: Rig, cron_backup: tuple[str, dict[str, str]],
                                                  host: RemoteHost) -> None:  # fmt: skip
    identifier, before = cron_backup
    wipe(host)
    assert snapshot(host) != before  # really wiped

    restored = inv("restore", "--backup", identifier, "--yes", "--config", str(rig.config_file))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    lines = restored.stdout.strip().splitlines()
    assert "(reason pre-restore)" in lines[-2]
    assert lines[-1].startswith(f"restored {identifier} (full): ")
    assert snapshot(host) == before


def test_drill_marks_verified_and_a_flipped_byte_fails_it(rig: Rig, cron_backup: tuple[str, dict[str, str]],
                                                          host: RemoteHost, tmp_path: Path) -> None:  # fmt: skip
    identifier, _ = cron_backup
    drill = inv("restore.drill", "--backup", identifier, "--config", str(rig.config_file))
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert f"drill of {identifier} passed" in drill.stdout and "marked verified" in drill.stdout

    listed = inv("backups", "--retention", "--config", str(rig.config_file))
    assert listed.returncode == 0, listed.stderr
    *table, preview = listed.stdout.strip().splitlines()
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert preview == f"retention: keep {', '.join(sorted(rows))}; would delete none"  # all from the last day
    assert rows[identifier][1:4] == ["full", "complete", "yes"]
    other = max(name for name in rows if name != identifier)  # the pre-restore backup
    assert rows[other][1:4] == ["full", "complete", "no"]

    key = f"backups/{PROJECT}/{other}/files.tar.age"
    flip_a_byte(rig.cos, key, tmp_path / "blob")
    run(host, f"rm -rf {BASE}/shared/backups/latest")  # else the intact local copy would be used
    failed = inv("restore.drill", "--backup", other, "--config", str(rig.config_file))
    assert failed.returncode == 4
    assert failed.stderr.strip().endswith(
        f"backup {other}: files.tar.age is corrupt (SHA-256 differs from the manifest)"
    )
    assert not rig.cos.objects(f"backups/{PROJECT}/{other}/verified.json")
    metrics = run(host, f"cat {BASE}/shared/metrics/backup.prom")
    assert "appliance_backup_drill_last_success 0" in metrics


def test_a_wrong_cos_key_is_one_line_through_inv_backup(rig: Rig, cron_backup: object, host: RemoteHost) -> None:
    settings = f"{BASE}/shared/backup.json"
    run(host, f"cp -p {settings} {settings}.good && sed -i 's/{SECRET_KEY}/not-the-key/' {settings}")
    try:
        refused = inv("backup", "--config", str(rig.config_file))
    finally:
        run(host, f"mv {settings}.good {settings}")
    assert refused.returncode == 4
    assert refused.stderr.strip() == (
        f"error: {rig.config.settings.hosts[0].target}: backup failed: COS bucket {BUCKET}: list bucket: "
        "SignatureDoesNotMatch (403): check COS_SECRET_KEY"
    )
    again = inv("backup", "--reason", "after-fix", "--config", str(rig.config_file))
    assert again.returncode == 0, again.stderr
    assert "(reason after-fix)" in again.stdout


def test_a_deploy_takes_a_backup_before_its_migrations(rig: Rig, cron_backup: tuple[str, dict[str, str]],
                                                        host: RemoteHost) -> None:  # fmt: skip
    """A second deploy, with the seeded data in the database: the backup runs on the host, before migrations."""
    done = inv("deploy", "--version", "v1", "--config", str(rig.config_file), timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr
    line = run(host, f"grep -h '(reason pre-deploy)' {BASE}/shared/backups/backup.log | tail -n 1")
    identifier = line.split("backup ", 1)[1].split()[0]
    manifest = rig.cos.get_bytes(f"backups/{PROJECT}/{identifier}/manifest.json").decode()
    assert '"reason": "pre-deploy"' in manifest and '"public.messages": 1800' in manifest
    steps = [line.split()[0] for line in done.stdout.splitlines() if line.split()[:1] in (["backup"], ["migrations"])]
    assert steps[:2] == ["backup", "migrations"], done.stdout  # the report lists steps in the order they ran
