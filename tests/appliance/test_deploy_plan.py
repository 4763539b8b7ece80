"""Deploy's decisions and shell text, without a host."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from appliance.config import Config, load_config
from appliance.deploy import (
    Release,
    acquire_lock,
    deploy,
    lock_holder_message,
    prepare_steps,
    rollback_target,
    switch_steps,
    wait_healthy,
)
from appliance.errors import ConfigError
from tests.conftest import REPO

pytestmark = pytest.mark.unit


@pytest.fixture()
def config() -> Config:
    return load_config(REPO / "appliance.example.toml")


def test_lock_holder_is_named_with_its_age() -> None:
    holder = {"who": "alice@laptop", "command": "rollback", "version": "v7", "since": 1000.0}
    assert lock_holder_message(json.dumps(holder), 1042.5) == "deploy lock held by alice@laptop (rollback v7) for 42s"
    assert "holder unreadable" in lock_holder_message("garbage", 0)


def test_lock_is_a_mkdir(config: Config) -> None:
    command = acquire_lock(config.settings, {"who": "x"})
    assert command.startswith("mkdir /opt/appliance/shared/deploy.lock && ")


def test_release_procedure_order_and_drain(config: Config) -> None:
    release, previous = Release(config.settings, "v2"), Release(config.settings, "v1")
    names = [step.name for step in [*prepare_steps(config, release, []), *switch_steps(release, previous)]]
    assert names == [
        "validate release",
        "databases up",
        "migrations",
        "API v2 up",
        "health gate",
        "switch traffic",
        "current release",
        "drain API v1",
    ]
    redeploy = [step.name for step in switch_steps(release, release)]
    assert "drain API v2" not in redeploy


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


def test_registry_transport_is_refused_before_anything_happens(tmp_path: Path) -> None:
    text = (REPO / "appliance.example.toml").read_text().replace('transport = "ssh"', 'transport = "registry"')
    config_file = tmp_path / "appliance.toml"
    config_file.write_text(text.replace('# registry = "ccr', 'registry = "ccr'))
    config = load_config(config_file)
    with pytest.raises(ConfigError, match=r"images\.transport: 'registry' is not built yet: use 'ssh'"):
        deploy(config, "cvm-appliance/api:v1", "v1")
    assert not (tmp_path / "secrets.env").exists()  # refused before generating anything
