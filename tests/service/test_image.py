"""service/Dockerfile, built by appliance/build.py, runs gunicorn as a non-root user and gets healthy."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.build import build_api_image
from appliance.config import load_config
from service.migrate import apply_migrations
from tests.conftest import build_config_file
from tests.service.stack import REPO, TEST_REDIS_URL, FakeLlm, free_port, wait_until

pytestmark = pytest.mark.integration


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, cwd=REPO).stdout


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = load_config(build_config_file(Path(tmp_path_factory.mktemp("build"))))
    tag = build_api_image(config, "test-build")
    yield tag
    subprocess.run(["docker", "rmi", tag], capture_output=True)


@pytest.fixture
def container(image: str, database_url: str, redis_prefix: str, fake_llm: FakeLlm) -> Iterator[tuple[str, int]]:
    asyncio.run(apply_migrations(database_url))
    port = free_port()
    name = f"cvm-service-test-{secrets.token_hex(4)}"
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": TEST_REDIS_URL,
        "REDIS_KEY_PREFIX": f"{redis_prefix}image:",
        "AI_MODEL_BASE_URL": fake_llm.base_url,
        "AI_API_KEY": "sk-image",
        "JWT_SECRET": secrets.token_hex(32),
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "2",
        "SERVICE_VERSION": "test-build",  # as a release's Compose file sets it (compose/api.yml.j2): not baked in
    }
    flags = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    run("docker", "run", "-d", "--name", name, "--network", "host", *flags, image)
    try:
        yield name, port
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_image_runs_non_root_and_serves_health(image: str, container: tuple[str, int]) -> None:
    name, port = container
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200, 60, "the container")
    body = httpx.get(f"http://127.0.0.1:{port}/api/health").json()
    assert body["version"] == "test-build" and body["database"]["connected"]
    assert run("docker", "exec", name, "id", "-u").strip() != "0"
    config = json.loads(run("docker", "inspect", name))[0]["Config"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    baked = json.loads(run("docker", "image", "inspect", image))[0]["Config"]["Env"]
    assert not any(var.startswith(("JWT_SECRET=", "AI_API_KEY=", "DATABASE_URL=")) for var in baked)
    assert not any(var.startswith("SERVICE_VERSION=") for var in baked)  # one commit, one image, whatever the release
    processes = [line for line in run("docker", "top", name).splitlines() if "gunicorn" in line]
    assert len(processes) == 3  # master + WEB_CONCURRENCY=2 workers
