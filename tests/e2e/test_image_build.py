"""The API image: built by an operator on Python 3.10 for the image's Python, it imports every locked package; two
fresh builds of one commit give the same layers; `inv deploy --check` plans a release whose image is not built."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.build import LOCK, build_api_image, canonical_name, download_wheelhouse, parse_lock, split_lock
from appliance.config import load_config
from appliance.errors import ApplianceError
from tests.conftest import REPO, RUN_ID, Bootstrapped, build_config_file, inv

# The operator side's promise is Ubuntu 22.04's Python 3.10; .ci/run makes this venv (and fails without a 3.10).
PYTHON310 = REPO / ".venv310/bin/python"
BUILD = (
    "import sys; from pathlib import Path; from appliance.build import build_api_image; "
    "from appliance.config import load_config; "
    "print(sys.version_info[:2], build_api_image(load_config(Path(sys.argv[1])), sys.argv[2], no_cache=True))"
)
# Inside the image: every distribution in /opt/site, its top-level modules (from its RECORD), each imported.
IMPORT_ALL = """
import importlib, importlib.metadata as md, json
found, failed = {}, {}
for dist in md.distributions(path=["/opt/site"]):
    tops = set()
    for file in dist.files or []:
        top = file.parts[0]
        if top.endswith((".dist-info", ".data")) or top in ("..", "bin", "__pycache__"):
            continue
        tops.add(top.split(".")[0] if len(file.parts) == 1 else top)
    found[dist.metadata["Name"]] = sorted(tops)
    for module in tops:
        try:
            importlib.import_module(module)
        except Exception as exc:
            failed[module] = repr(exc)
print(json.dumps({"found": found, "failed": failed}))
"""


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def layers(ref: str) -> list[str]:
    return list(json.loads(docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", ref)))


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_config_file(Path(tmp_path_factory.mktemp("build")))


@pytest.fixture(scope="module")
def built_on_310(config_file: Path) -> Iterator[tuple[str, float]]:
    """The image built with no cache by the operator side running on Python 3.10, and how long that took."""
    assert PYTHON310.exists(), f"{PYTHON310} missing: run .ci/run, or python3.10 -m venv .venv310 && pip install -e ."
    version = f"{RUN_ID}-py310"
    started = time.monotonic()
    done = subprocess.run(
        [str(PYTHON310), "-c", BUILD, str(config_file), version], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("(3, 10) "), done.stdout
    ref = done.stdout.split()[-1]
    yield ref, time.monotonic() - started
    subprocess.run(["docker", "rmi", ref], capture_output=True)


@pytest.mark.integration
def test_an_operator_on_python_310_builds_an_image_that_imports_every_locked_package(
    built_on_310: tuple[str, float],
) -> None:
    ref, seconds = built_on_310
    print(f"no-cache build from Python 3.10: {seconds:.1f}s")
    out = docker("run", "--rm", "-i", "--network", "none", "--entrypoint", "python3", ref, "-c", IMPORT_ALL)
    report = json.loads(out)
    assert report["failed"] == {}
    image, _ = split_lock(parse_lock((REPO / LOCK).read_text()))
    installed = {canonical_name(name) for name in report["found"]}
    assert installed == {item.name for item in parse_lock(image)}  # all of the lock, and the build tools not
    assert all(report["found"].values()), report["found"]
    python = docker("run", "--rm", "--entrypoint", "python3", ref, "-c", "import sys; print(sys.version_info[:2])")
    assert python.strip() == "(3, 11)"


@pytest.mark.integration
def test_two_fresh_builds_of_one_commit_give_the_same_layers(
    built_on_310: tuple[str, float], config_file: Path
) -> None:
    first, _ = built_on_310
    # The second build: another interpreter (this one), another version name, no cache, a later time.
    assert sys.version_info[:2] != (3, 10)
    started = time.monotonic()
    second = build_api_image(load_config(config_file), f"{RUN_ID}-again", no_cache=True)
    try:
        print(f"second no-cache build: {time.monotonic() - started:.1f}s")
        assert layers(second) == layers(first)
        assert docker("image", "inspect", "-f", "{{.Id}}", second) != docker("image", "inspect", "-f", "{{.Id}}", first)
    finally:
        subprocess.run(["docker", "rmi", second], capture_output=True)


@pytest.mark.integration
def test_a_file_whose_hash_the_lock_does_not_list_is_refused_in_one_line(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("six==1.17.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    folder = tmp_path / "wheelhouse"
    with pytest.raises(ApplianceError, match=r"^downloading the wheelhouse for linux/amd64 .* failed: ERROR: .*HASHES"):
        download_wheelhouse(sys.executable, "linux/amd64", lock, folder)
    assert list(folder.iterdir()) == []


@pytest.mark.e2e
def test_deploy_check_plans_a_release_whose_image_is_not_built(bootstrapped: Bootstrapped) -> None:
    version = f"unbuilt-{secrets.token_hex(3)}"
    run = inv("deploy", "--check", "--version", version, "--config", str(bootstrapped.sandbox.config_file))
    assert run.returncode == 0, run.stdout + run.stderr
    ref = f"cvm-appliance/api:{version}"
    assert re.search(rf"build API image\s+pending .*build {re.escape(ref)} for linux/amd64", run.stdout), run.stdout
    assert re.search(rf"images\s+pending .*send {re.escape(ref)}", run.stdout), run.stdout
    assert re.search(r"migrations\s+pending", run.stdout), run.stdout
    missing = subprocess.run(["docker", "image", "inspect", ref], capture_output=True)
    assert missing.returncode != 0  # check mode built nothing
