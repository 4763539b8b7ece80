"""The service image, built on the operator's machine from a wheelhouse (pip inside a build can't be relied on)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone

from appliance.config import Config
from appliance.errors import ApplianceError
from appliance.render import BUNDLE_ROOT, api_image

WHEELHOUSE = "build/wheelhouse"


def bundle_commit() -> str:
    """The bundle's git commit, short, with -dirty for uncommitted changes; "nogit" outside a checkout."""
    described = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=BUNDLE_ROOT, capture_output=True, text=True, check=False
    )
    return described.stdout.strip() if described.returncode == 0 else "nogit"


def default_version() -> str:
    """UTC time and the bundle's commit, e.g. 20261123-1701-3f9c2ab (a dirty tree is marked)."""
    return f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{bundle_commit()}"


def _run(what: str, command: list[str]) -> None:
    done = subprocess.run(command, cwd=BUNDLE_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise ApplianceError(f"{what} failed: {last[0]}")


def build_api_image(config: Config, version: str) -> str:
    """Build the service image for `version`; return its reference."""
    ref = api_image(config.settings, version)
    wheels = ["--wheel-dir", WHEELHOUSE, "-r", "service/requirements.txt", "pip", "async-timeout"]
    _run("building the wheelhouse", [sys.executable, "-m", "pip", "wheel", "-q", *wheels])
    _run(
        f"docker build of {ref}",
        [
            "docker", "build", "-q", "--force-rm", "-f", "service/Dockerfile",
            "--build-arg", f"BASE_IMAGE={config.settings.images.base_image}",
            "--build-arg", f"SERVICE_VERSION={version}",
            "-t", ref, ".",
        ],
    )  # fmt: skip
    return ref
