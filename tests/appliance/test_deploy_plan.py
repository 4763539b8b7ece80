"""Deploy's decisions and shell text, without a host."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from appliance.config import Config, load_config
from appliance.deploy import build_pending, deploy, prepare_steps, switch_steps
from appliance.errors import ConfigError
from appliance.images import ImagesOnHost, LocalImage
from appliance.lock import acquire_lock, lock_holder_message, taken_before_boot
from appliance.registry import RegistryLogin, image_pulled
from appliance.release_commands import publish_web, release_stack, switch_traffic, wait_healthy
from appliance.releases import PruneReleases, Release, manifest, releases_to_prune, rollback_target
from appliance.shell import sh
from appliance.stack_steps import ReleaseStack
from appliance.steps import Fact, Run, Stream
from appliance.views import release_rows, releases_table
from tests.conftest import REPO

pytestmark = pytest.mark.unit


@pytest.fixture()
def config() -> Config:
    return load_config(REPO / "appliance.example.toml")


def test_lock_holder_is_named_with_its_age() -> None:
    holder = {"who": "alice@laptop", "command": "rollback", "version": "v7", "since": 1000.0}
    message = lock_holder_message(json.dumps(holder), 1042.5)
    assert message == "deploy lock held by alice@laptop (rollback v7) for 42s (or wait for it with --wait)"
    assert "holder unreadable" in lock_holder_message("garbage", 0)
    stale = lock_holder_message(json.dumps(holder), 1000 + 2 * 3600)
    assert stale.endswith("for 7200s: it looks stale; if that deploy is gone, `inv lock.break`")
    rebooted = lock_holder_message(json.dumps(holder), 1040, before_boot=True)
    assert rebooted == (
        "deploy lock held by alice@laptop (rollback v7) for 40s: it looks stale, it was taken before the host last "
        "booted and no deploy survives that; `inv lock.break`"
    )


def test_a_lock_is_stale_when_taken_before_the_host_booted(config: Config, tmp_path: Path) -> None:
    """The boot test, run by a real shell here: this machine's PID 1 started before a folder made now, not after."""
    lock = tmp_path / "deploy.lock"
    lock.mkdir()
    command = taken_before_boot(config.settings).replace(sh(config.settings.paths.deploy_lock), sh(str(lock)))
    assert subprocess.run(["sh", "-c", command]).returncode == 1  # made after the boot: a live lock
    os.utime(lock, (1, 1))  # 1970: before any boot
    assert subprocess.run(["sh", "-c", command]).returncode == 0


def test_lock_is_a_mkdir(config: Config) -> None:
    command = acquire_lock(config.settings, {"who": "x"})
    assert command.startswith("mkdir /opt/appliance/shared/deploy.lock && ")


def test_release_procedure_order_and_drain(config: Config) -> None:
    release, previous = Release(config.settings, "v2"), Release(config.settings, "v1")
    names = [step.name for step in [*prepare_steps(config, release, []), *switch_steps(release, previous)]]
    assert names == [
        "validate release",
        "front end",
        "stack up",
        "migrations",
        "API v2 up",
        "switch traffic",
        "publish front end",
        "current release",
        "previous API v1",
        "monitoring files",
        "release stack",
    ]
    redeploy = [step.name for step in switch_steps(release, release)]
    assert "previous API v2" not in redeploy


def test_a_backup_comes_before_migrations_once_there_is_data(config: Config) -> None:
    backup = config.settings.backup.model_copy(update={"enabled": True})
    settings = config.settings.model_copy(update={"backup": backup})
    backed = dataclasses.replace(config, settings=settings)
    release = Release(settings, "v2")
    steps = prepare_steps(backed, release, [])
    assert [step.name for step in steps] == ["validate release", "front end", "stack up", "backup", "migrations"]
    assert steps[3].plan({}) == [
        Run("BACKUP_LOCK_WAIT=1800 /opt/appliance/bin/backup.sh --reason pre-deploy", "a backup before migrations")
    ]
    assert "backup" not in [step.name for step in prepare_steps(backed, release, [], first=True)]


def test_a_failed_command_before_a_wait_loop_skips_the_whole_loop(config: Config, tmp_path: Path) -> None:
    """`A && loop` must not run the loop's own failure message when A fails (it is a subshell)."""
    settings = config.settings.model_copy(update={"base_dir": str(tmp_path)})
    (tmp_path / "bin").mkdir()
    (tmp_path / "releases/v1").mkdir(parents=True)
    script = f"false && {wait_healthy(Release(settings, 'v1'), ('postgres',))}; echo after"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=10)
    assert (done.stdout, done.stderr) == ("after\n", "")


def test_rollback_target_is_the_release_that_served_before() -> None:
    assert rollback_target(["v1", "v2", "v3"], "v3") == "v2"
    assert rollback_target(["v1", "v2", "v3", "v2"], "v2") == "v3"
    assert rollback_target(["v1"], "v1") is None


def test_registry_transport_needs_its_password_before_anything_happens(tmp_path: Path) -> None:
    text = (REPO / "appliance.example.toml").read_text().replace('transport = "ssh"', 'transport = "registry"')
    config_file = tmp_path / "appliance.toml"
    text = text.replace('# registry = "ccr', 'registry = "ccr').replace(
        '# registry_user = "1000', 'registry_user = "1000'
    )
    config_file.write_text(text)
    (tmp_path / "secrets.env").write_text("AI_API_KEY=sk-test-0001\n")
    (tmp_path / "secrets.env").chmod(0o600)
    config = load_config(config_file)
    with pytest.raises(ConfigError, match=r"missing secret\(s\) REGISTRY_PASSWORD"):
        deploy(config, "cvm-appliance/api:v1", "v1")


def test_inv_deploy_names_a_missing_secret_before_it_builds_anything(tmp_path: Path) -> None:
    config_file = tmp_path / "appliance.toml"
    config_file.write_text((REPO / "appliance.example.toml").read_text())
    (tmp_path / "secrets.env").write_text("")
    (tmp_path / "secrets.env").chmod(0o600)
    run = subprocess.run(
        [sys.executable, "-m", "invoke", "deploy", "--config", str(config_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "building" not in run.stdout and "AI_API_KEY" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_registry_steps_log_in_with_the_password_on_stdin_and_pull_only_what_is_missing() -> None:
    login = RegistryLogin("ccr.ccs.tencentyun.com/team", "100012345678", "hunter2-registry")
    assert login.name == "registry login ccr.ccs.tencentyun.com"
    (action,) = login.plan({})
    assert isinstance(action, Stream)
    assert action.command == "docker login --username 100012345678 --password-stdin ccr.ccs.tencentyun.com >/dev/null"
    assert b"".join(action.source.chunks()) == b"hunter2-registry"
    pulled = image_pulled("ccr.ccs.tencentyun.com/team/api:v2")
    assert pulled.plan({"check": Fact("sha256:ab\n", 0)}) == []
    assert pulled.plan({"check": Fact("", 1)}) == [
        Run(
            "docker pull --quiet ccr.ccs.tencentyun.com/team/api:v2 >/dev/null",
            "pull ccr.ccs.tencentyun.com/team/api:v2",
        )
    ]


def test_prune_keeps_the_newest_the_current_and_the_rollback_target() -> None:
    on_host = ["v1", "v2", "v3", "v4", "v5", "broken"]
    history = ["v1", "v2", "v3", "v4", "v5", "v1"]  # v5 was rolled back to v1
    assert releases_to_prune(on_host, history, "v1", keep=2) == ["v4", "v3", "v2", "broken"]
    assert releases_to_prune(on_host, history, "v1", keep=3) == ["v3", "v2", "broken"]
    # The rollback target (v3) stays even when `keep` alone would drop it.
    assert releases_to_prune(["v1", "v2", "v3"], ["v2", "v3", "v3", "v1"], "v1", keep=1) == ["v2"]
    assert releases_to_prune(["v1"], ["v1"], "v1", keep=2) == []


def test_prune_step_removes_folders_and_image_tags_only_when_needed(config: Config) -> None:
    step = PruneReleases(config.settings, keep=2)
    facts = {
        "on_host": Fact("v1\nv2\nv3\n", 0),
        "history": Fact("v1\nv2\nv3\n", 0),
        "current": Fact("/opt/appliance/releases/v3\n", 0),
        "tags": Fact("v3 333\nv2 222\nv1 111\n", 0),
    }
    assert step.plan(facts) == [
        Run(
            "rm -rf /opt/appliance/releases/v1 && { docker image rm cvm-appliance/api:v1 >/dev/null 2>&1 || true; }",
            "remove v1",
        )
    ]
    pruned = {**facts, "on_host": Fact("v2\nv3\n", 0), "tags": Fact("v3 333\nv2 222\n<none> 999\n", 0)}
    assert step.plan(pruned) == []
    # An interrupted deploy's tag without a release folder goes as well.
    orphan = {**pruned, "tags": Fact("v3 333\nv2 222\nv5 555\n", 0)}
    assert step.plan(orphan) == [Run("{ docker image rm cvm-appliance/api:v5 >/dev/null 2>&1 || true; }", "remove v5")]


def test_prune_keeps_a_content_tag_while_a_kept_release_runs_that_image(config: Config) -> None:
    step = PruneReleases(config.settings, keep=2)
    tags = "v3 333\nid-333 333\nv2 222\nid-222 222\nv1 111\nid-111 111\n"
    facts = {
        "on_host": Fact("v1\nv2\nv3\n", 0),
        "history": Fact("v1\nv2\nv3\n", 0),
        "current": Fact("/opt/appliance/releases/v3\n", 0),
        "tags": Fact(tags, 0),
    }
    (action,) = step.plan(facts)
    assert action == Run(
        "rm -rf /opt/appliance/releases/v1 && "
        "{ docker image rm cvm-appliance/api:v1 cvm-appliance/api:id-111 >/dev/null 2>&1 || true; }",
        "remove id-111 v1",
    )
    # v1 and v2 are one image: its content tag stays with v2.
    shared = {**facts, "tags": Fact("v3 333\nid-333 333\nv2 222\nv1 222\nid-222 222\n", 0)}
    assert step.plan(shared) == [
        Run(
            "rm -rf /opt/appliance/releases/v1 && { docker image rm cvm-appliance/api:v1 >/dev/null 2>&1 || true; }",
            "remove v1",
        )
    ]


def test_manifest_names_images_env_hash_commit_who_and_when() -> None:
    when = datetime(2026, 11, 23, tzinfo=timezone.utc)
    body = json.loads(manifest("v7", {"api": "sha256:ab"}, b"A=1\n", "3f9c2ab", "bob@ci", when))
    assert body == {
        "version": "v7",
        "images": {"api": "sha256:ab"},
        "env_sha256": "91d6a3d55e9fea7911c537afae6607c77fa8bc0f3a76c375e104ac5a8cfa84db",
        "commit": "3f9c2ab",
        "who": "bob@ci",
        "at": "2026-11-23T00:00:00+00:00",
    }


def test_release_listing_reads_manifests_history_and_audit() -> None:
    probe = "\n".join(
        [
            "@current /opt/appliance/releases/v2",
            "@history v1 v2 v1 v2",
            '@release v1 {"at": "2026-11-22T10:00:00+00:00", "who": "ann@lap", "commit": "aaa1111"}',
            '@release v2 {"at": "2026-11-23T10:00:00+00:00", "who": "bob@ci", "commit": "bbb2222"}',
            "@release broken ",
            '{"command": "deploy", "version": "broken", "result": "failed"}',
            '{"command": "deploy", "version": "v2", "result": "ok"}',
            '{"command": "lock.break", "holder": "x", "result": "ok"}',
            '{"command": "rollback", "version": "v1", "previous": "v2", "result": "ok", "who": "cat@ops", '
            '"at": "2026-11-24T09:00:00+00:00"}',
        ]
    )
    rows = release_rows(probe)
    assert [(row.version, row.role, row.result, row.action) for row in rows] == [
        ("v2", "current", "ok", "deploy"),
        ("v1", "rollback", "ok", "rollback from v2"),
        ("broken", "", "failed", "deploy"),
    ]
    table = releases_table(rows).splitlines()
    assert table[0].split() == ["VERSION", "ROLE", "RESULT", "LAST", "ACTION", "AT", "BY", "COMMIT"]
    # Who rolled back and when comes from the audit log; a release without audit entries shows its manifest's.
    assert table[2].split() == [
        "v1",
        "rollback",
        "ok",
        "rollback",
        "from",
        "v2",
        "2026-11-24T09:00:00+00:00",
        "cat@ops",
        "aaa1111",
    ]
    assert table[1].split() == ["v2", "current", "ok", "deploy", "2026-11-23T10:00:00+00:00", "bob@ci", "bbb2222"]


def test_the_switch_touches_only_nginx_and_the_rest_of_the_release_follows_it(config: Config) -> None:
    release = Release(config.settings, "v2")
    switch = switch_traffic(release)
    assert "up -d --no-deps nginx" in switch  # only when no nginx runs yet (a first deploy)
    assert 'docker exec "$n" nginx -s reload' in switch and "prometheus" not in switch
    names = [step.name for step in switch_steps(release, Release(config.settings, "v1"))]
    assert names.index("switch traffic") < names.index("release stack")  # monitoring and the rest: after traffic
    assert isinstance(switch_steps(release, None)[-1], ReleaseStack)  # tests/appliance/test_release_stack.py
    assert release_stack(release).endswith("--project-name agents --file docker-compose.yml up -d --remove-orphans")


def test_publishing_a_front_end_puts_assets_before_the_entry_page_and_keeps_only_kept_releases_assets(
    config: Config, tmp_path: Path
) -> None:
    """Run through real bash: v2 replaces v1's page, v1's assets stay while v1 is kept, a pruned release's go."""
    settings = config.settings.model_copy(update={"base_dir": str(tmp_path)})
    for version, asset in (("v1", "app.1111.js"), ("v2", "app.2222.js")):
        www = tmp_path / "releases" / version / "www"
        (www / "assets").mkdir(parents=True)
        (www / "index.html").write_text(f"<script src=/assets/{asset}></script>")
        (www / "assets" / asset).write_text(version)
        (www / "favicon.svg").write_text(version)
    (tmp_path / "shared/www/assets").mkdir(parents=True)
    (tmp_path / "shared/www/assets/app.0000.js").write_text("from a pruned release")

    def publish(version: str) -> None:
        done = subprocess.run(["bash", "-c", publish_web(Release(settings, version))], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    publish("v1")
    publish("v2")
    root = tmp_path / "shared/www"
    assert (root / "index.html").read_text() == "<script src=/assets/app.2222.js></script>"
    assert sorted(path.name for path in (root / "assets").iterdir()) == ["app.1111.js", "app.2222.js"]
    assert (root / "favicon.svg").read_text() == "v2"
    assert not (root / ".index.html.next").exists()
    publish("v1")  # a rollback: the old page again, its assets never gone
    assert (root / "index.html").read_text() == "<script src=/assets/app.1111.js></script>"


def test_check_mode_plans_the_build_and_the_send_of_an_image_not_built_yet(config: Config) -> None:
    ref = "cvm-appliance/api:20261201-0700-abc1234"
    pending = build_pending(ref, config.settings)
    assert (pending.step, pending.status) == ("build API image", "pending")
    assert pending.actions == [f"build {ref} for linux/amd64 (service/requirements.lock)"]
    # Not built: no ID, so even a host with an image of that name gets the one `inv deploy` will build.
    step = ImagesOnHost((LocalImage(ref, "", 0),))
    (action,) = step.plan({"0:id": Fact("sha256:older\n", 0), "0:by_id": Fact("", 1)})
    assert isinstance(action, Stream) and action.why.startswith(f"send {ref} ")
