"""schemathesis (CLI): requests generated from the OpenAPI schema never get a server error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.service.api import new_user
from tests.service.stack import Service

pytestmark = pytest.mark.integration
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def test_generated_requests_never_get_a_server_error(service: Service, tmp_path: Path) -> None:
    with httpx.Client(base_url=service.url, timeout=30) as client:
        user = new_user(client)
        command = [
            str(SCHEMATHESIS), "run", f"{service.url}/openapi.json",
            "--checks", "not_a_server_error",
            "--header", f"Authorization: {user.headers['Authorization']}",
            "--max-examples", "25",
            "--seed", "1",
            "--generation-allow-x00", "true",
            "--phases", "examples,coverage,fuzzing",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        # Generated discussions would otherwise keep the fake LLM busy for later tests.
        for discussion in client.get("/api/discussions?limit=100", headers=user.headers).json():
            client.post(f"/api/discussions/{discussion['id']}/stop", headers=user.headers)
    assert result.returncode == 0, result.stdout[-6000:]
