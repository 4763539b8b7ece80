"""scripts/container-metrics.sh against the real Docker engine: containers labelled like Compose's, running,
stopped, healthy and unhealthy, become a textfile node_exporter (and promtool) accept."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import sandbox as sandboxes
from tests.conftest import REPO, RUN_ID

SCRIPT = REPO / "scripts" / "container-metrics.sh"
PROJECT = f"{RUN_ID}-cm"


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def containers() -> Iterator[list[str]]:
    """A stack `PROJECT` (web healthy, sick unhealthy, gone exited, a one-off), its API project, and a stranger."""
    sandboxes.ensure_base_image(sandboxes.docker_client(), log=lambda line: None)
    made: list[str] = []

    def start(name: str, project: str, service: str, *extra: str, command: str = "sleep 300") -> None:
        labels = [
            "--label",
            f"com.docker.compose.project={project}",
            "--label",
            f"com.docker.compose.service={service}",
        ]
        docker("run", "-d", "--name", name, *labels, *extra, sandboxes.BASE_IMAGE, "sh", "-c", command)
        made.append(name)

    health = ["--health-interval", "1s", "--health-retries", "1", "--health-start-period", "0s"]
    try:
        start(f"{PROJECT}-web", PROJECT, "web", "--health-cmd", "true", *health)
        start(f"{PROJECT}-sick", PROJECT, "sick", "--health-cmd", "false", *health)
        start(f"{PROJECT}-gone", PROJECT, "gone", command="exit 0")
        start(f"{PROJECT}-migrate", PROJECT, "web", "--label", "com.docker.compose.oneoff=True")
        start(f"{PROJECT}-api", f"{PROJECT}-api-v2", "api")
        start(f"{PROJECT}x-other", f"{PROJECT}x", "web")
        deadline = time.monotonic() + 30
        for name, state in ((f"{PROJECT}-sick", "(unhealthy)"), (f"{PROJECT}-web", "(healthy)")):
            while state not in docker("ps", "-a", "--filter", f"name=^{name}$", "--format", "{{.Status}}"):
                assert time.monotonic() < deadline, f"{name} never became {state}"
                time.sleep(0.5)
        yield made
    finally:
        for name in made:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


@pytest.mark.integration
def test_container_states_become_a_valid_textfile(containers: list[str], tmp_path: Path, promtool: str) -> None:
    out = tmp_path / "metrics" / "containers.prom"
    subprocess.run([str(SCRIPT), PROJECT, str(out)], check=True, capture_output=True, text=True)
    text = out.read_text()
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    samples = dict(re.findall(r"^(appliance_container_\w+\{[^}]*\}) (\d)$", text, re.MULTILINE))
    running, healthy = "appliance_container_running", "appliance_container_healthy"
    assert samples == {
        f'{running}{{project="{PROJECT}",service="web"}}': "1",
        f'{running}{{project="{PROJECT}",service="sick"}}': "1",
        f'{running}{{project="{PROJECT}",service="gone"}}': "0",
        f'{running}{{project="{PROJECT}-api-v2",service="api"}}': "1",
        f'{healthy}{{project="{PROJECT}",service="web"}}': "1",
        f'{healthy}{{project="{PROJECT}",service="sick"}}': "0",
    }
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind
