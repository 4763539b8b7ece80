"""Monitoring tests: the example config rendered into a folder, as it lands on a host."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.config import Config, load_config
from appliance.render import release_files, write_tree
from appliance.secrets import ensure_generated, load_secrets
from tests.conftest import REPO


def example_config(folder: Path, extra_toml: str = "", secrets: str = "") -> Config:
    """appliance.example.toml (plus `extra_toml` appended) with a 0600 secrets.env in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "appliance.toml"
    config_file.write_text((REPO / "appliance.example.toml").read_text(encoding="utf-8") + extra_toml)
    secrets_file = folder / "secrets.env"
    secrets_file.write_text("AI_API_KEY=sk-monitoring-test-1234\n" + secrets)
    secrets_file.chmod(0o600)
    ensure_generated(secrets_file, {})
    return load_config(config_file)


def rendered_release(config: Config, out: Path, version: str = "v1", reveal: bool = False) -> Path:
    """Every release file written under `out`; returns the release folder."""
    secrets = load_secrets(config.secrets_path, {})
    write_tree(release_files(config, secrets, version, reveal=reveal), out)
    return out / config.settings.base_dir.lstrip("/") / "releases" / version


@pytest.fixture()
def release(tmp_path: Path) -> Path:
    """The example's production release v1, rendered with the default thresholds."""
    return rendered_release(example_config(tmp_path), tmp_path / "out")


@pytest.fixture(scope="session")
def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: scripts/dev-prereqs.sh --servers installs Debian's prometheus package"
    return found
