"""A one-off container that fails under the host's Compose (v1 on Debian 12: `docker-compose run` logs the exit status
as its own last line): the step's error is the container's own last line, as a migration's reason reaches the
operator."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from appliance import sandbox as sandboxes
from appliance.executor import Executor
from appliance.shell import sh
from appliance.steps import Always
from tests.appliance.test_executor import LocalHost
from tests.conftest import RUN_ID

pytestmark = pytest.mark.integration
REASON = "the database speaks no TLS, db.internal:5432/appliance (tls verify-full): turn SSL on for the instance"


def test_a_failed_one_off_container_reads_as_its_own_last_line(tmp_path: Path) -> None:
    sandboxes.ensure_base_image(sandboxes.docker_client(), log=lambda line: None)
    (tmp_path / "docker-compose.yml").write_text(
        f'version: "2.4"\nservices:\n  api:\n    image: {sandboxes.BASE_IMAGE}\n    network_mode: none\n'
    )
    # As service.migrate ends: its one line on stderr (sys.exit), after a line of output.
    job = f"import sys; print('connecting', flush=True); sys.exit({REASON!r})"
    compose = sh("docker-compose", "--project-name", f"{RUN_ID}-oneoff", "run", "--rm", "--no-deps", "api")
    run = f"cd {sh(str(tmp_path))} && {compose} {sh('python3', '-c', job)}"
    result = Executor(LocalHost()).apply(Always("migrations", run, "apply database migrations"))
    assert (result.status, result.error) == ("failed", f"apply database migrations: {REASON}")
    direct = subprocess.run(["bash", "-c", run], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert direct.stderr.strip().splitlines()[-2:] == [REASON, "1"]  # Compose v1's own line, which the step drops
