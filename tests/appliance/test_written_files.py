"""Every bootstrap step that writes a file says so (`WritesFiles`), so `inv render` shows every file it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bootstrap import ASSUMED_FACTS, bootstrap_files, bootstrap_steps
from appliance.config import Config, load_config
from appliance.steps import Fact, Upload, WritesFiles
from tests.appliance.test_backup_plan import CONFIG
from tests.conftest import REPO

pytestmark = pytest.mark.unit


def configs() -> list[Config]:
    """The example config's environments (ACME and self-signed)."""
    return [load_config(REPO / "appliance.example.toml", env) for env in ("production", "staging")]


@pytest.mark.parametrize("config", configs(), ids=["production", "staging"])
def test_every_step_that_uploads_a_file_on_a_blank_host_names_it(config: Config) -> None:
    steps = bootstrap_steps(config, ASSUMED_FACTS, None)
    uploading = 0
    for step in steps:
        blank = {name: Fact("", 1) for name in step.probes()}  # nothing there yet: every file is created
        uploads = [action for action in step.plan(blank) if isinstance(action, Upload)]
        if not uploads:
            continue
        uploading += 1
        assert isinstance(step, WritesFiles), f"{step.name}: uploads {uploads[0].path} but has no written_files()"
        shown = {item.path for item in step.written_files()}
        # A staged upload (sshd's drop-in goes to PATH.next first) names the file it becomes.
        assert not shown or all(upload.path.removesuffix(".next") in shown for upload in uploads), step.name
    assert uploading > 20
    rendered = {item.path for item in bootstrap_files(config)}
    assert "/etc/ssh/sshd_config.d/00-appliance-hardening.conf" in rendered
    assert "/etc/sysctl.d/60-appliance.conf" in rendered


def test_the_backup_zipapp_and_settings_are_written_but_never_shown(tmp_path: Path) -> None:
    (tmp_path / "appliance.toml").write_text(CONFIG)
    (tmp_path / "secrets.env").write_text("COS_SECRET_ID=id\nCOS_SECRET_KEY=key\n")
    (tmp_path / "secrets.env").chmod(0o600)
    backed = load_config(tmp_path / "appliance.toml")
    written = [step for step in bootstrap_steps(backed, ASSUMED_FACTS, None) if isinstance(step, WritesFiles)]
    hidden = [step.name for step in written if not step.written_files()]
    assert hidden == ["file /opt/appliance/lib/backup.pyz", "file /opt/appliance/shared/backup.json"]
