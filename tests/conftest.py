"""The test rig: the real sandbox CVM, made by the same code as `inv sandbox.up`."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from appliance import sandbox as sandboxes
from appliance.config import Config, load_config
from appliance.remote import RemoteHost, connect, open_host

REPO = Path(__file__).resolve().parent.parent
# One prefix per test run, so two runs on a machine never touch each other's containers.
RUN_ID = os.environ.get("APPLIANCE_TEST_RUN") or f"cvmt-{secrets.token_hex(3)}"


# The session's sandboxes by the fixture that makes each: under pytest-xdist (scripts/test.sh runs two workers with
# --dist loadgroup) every test on one of them runs on one worker, so no sandbox is made twice.
SESSION_SANDBOXES = {"shared_sandbox": "shared", "rig": "rig", "day_one": "day-one"}


def xdist_group(item: pytest.Item) -> str:
    """A test's xdist group: its session sandbox, else its module (a module's own sandbox or servers are then made
    once)."""
    names = getattr(item, "fixturenames", ())
    group = next((group for fixture, group in SESSION_SANDBOXES.items() if fixture in names), None)
    return group or item.nodeid.split("::")[0]


def pytest_itemcollected(item: pytest.Item) -> None:
    """Under --dist loadgroup, each test carries its group (marked here, before any collection_modifyitems: xdist's
    own reads the marks into the test ids)."""
    if getattr(item.config.option, "loadgroup", False):  # what an xdist worker of --dist loadgroup is told
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist the groups start longest first: the shared sandbox's (most e2e modules), the other e2e ones (each a
    sandbox to make), then the rest fill in; a stable sort keeps the order within each."""
    if getattr(config.option, "loadgroup", False):
        items.sort(key=lambda item: (xdist_group(item) != "shared", not item.nodeid.startswith("tests/e2e/")))


class SandboxFactory(Protocol):
    def __call__(self, suffix: str, release: str = sandboxes.DEFAULT_RELEASE) -> sandboxes.Sandbox: ...


def free_port() -> int:
    """A port free on 127.0.0.1 now. Explicit ports survive a container restart; Docker re-draws random ones."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _spec(tmp_root: Path, suffix: str, release: str) -> sandboxes.SandboxSpec:
    return sandboxes.SandboxSpec(
        name=f"{RUN_ID}-{suffix}",
        release=release,
        ssh_port=free_port(),
        http_port=free_port(),
        https_port=free_port(),
        state_root=tmp_root / "state",
        config_out=tmp_root / f"{suffix}.toml",
    )


@contextmanager
def started_sandboxes(root: Path) -> Iterator[SandboxFactory]:
    """A factory of sandboxes by name (their state under `root`); all it started are removed on exit."""
    specs: list[sandboxes.SandboxSpec] = []

    def start(suffix: str, release: str = sandboxes.DEFAULT_RELEASE) -> sandboxes.Sandbox:
        spec = _spec(root, suffix, release)
        specs.append(spec)
        return sandboxes.up(spec, log=lambda line: None)

    try:
        yield start
    finally:
        for spec in specs:
            sandboxes.down(spec)


@pytest.fixture(scope="session")
def sandbox_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFactory]:
    """Sandboxes for the session's shared fixtures; removed at the end of the session."""
    with started_sandboxes(tmp_path_factory.mktemp("sandboxes")) as start:
        yield start


@pytest.fixture(scope="module")
def module_sandbox_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFactory]:
    """Sandboxes for one module's own fixture; removed when the module is done: an idle sandbox's stack (its
    Prometheus, health checks, cron) takes CPU from the tests still running."""
    with started_sandboxes(tmp_path_factory.mktemp("sandboxes")) as start:
        yield start


@pytest.fixture(scope="session")
def shared_sandbox(sandbox_factory: SandboxFactory) -> sandboxes.Sandbox:
    """One sandbox for the e2e tests that only read it or write their own private paths."""
    return sandbox_factory("shared")


@pytest.fixture(scope="session")
def sandbox_config(shared_sandbox: sandboxes.Sandbox) -> Config:
    return load_config(shared_sandbox.config_file)


@pytest.fixture()
def sandbox_host(sandbox_config: Config, shared_sandbox: sandboxes.Sandbox) -> Iterator[RemoteHost]:
    host = sandbox_config.settings.hosts[0]
    with connect(host, shared_sandbox.key_file, shared_sandbox.known_hosts) as remote:
        yield remote


def build_config_file(folder: Path) -> Path:
    """appliance.example.toml on the rig's Debian base image: a config that builds the API image offline."""
    sandboxes.ensure_base_image(sandboxes.docker_client(), log=lambda line: None)
    example = (REPO / "appliance.example.toml").read_text(encoding="utf-8")
    text = example.replace('base_image = "python:3.11-slim-bookworm"', f'base_image = "{sandboxes.BASE_IMAGE}"')
    assert text != example, "appliance.example.toml no longer names python:3.11-slim-bookworm as images.base_image"
    path = folder / "build.toml"
    path.write_text(text, encoding="utf-8")
    return path


def example_config(folder: Path, keys: str = "sk-pool-one-1234") -> Config:
    """appliance.example.toml copied into `folder`, with a secrets file (0600) holding `keys` as AI_API_KEY and the
    generated passwords: what the render and unit tests start from."""
    from appliance.secrets import ensure_generated

    config_file = folder / "appliance.toml"
    config_file.write_text((REPO / "appliance.example.toml").read_text(encoding="utf-8"), encoding="utf-8")
    secrets_file = folder / "secrets.env"
    secrets_file.write_text(f"AI_API_KEY={keys}\n")
    secrets_file.chmod(0o600)
    ensure_generated(secrets_file, {})
    return load_config(config_file)


def as_foreground_job() -> None:
    """A `preexec_fn` for a task that the test interrupts as an operator's Ctrl-C would: SIGINT back to its default.
    A shell without job control starts background jobs with SIGINT ignored (`bash .ci/run &` does), every child
    inherits that, and Python then installs no KeyboardInterrupt handler: the SIGINT would do nothing at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def inv(*args: str, timeout: int = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a task exactly as an operator does: `inv ARGS` from the repository (`env`: extra variables)."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@dataclass(frozen=True)
class Bootstrapped:
    """A sandbox after its first `inv bootstrap`, with that run's output and duration."""

    sandbox: sandboxes.Sandbox
    first_run: subprocess.CompletedProcess[str]
    seconds: float


def bootstrap_sandbox(sandbox: sandboxes.Sandbox) -> Bootstrapped:
    started = time.monotonic()
    run = inv("bootstrap", "--config", str(sandbox.config_file))
    assert run.returncode == 0, run.stdout + run.stderr
    return Bootstrapped(sandbox, run, time.monotonic() - started)


@pytest.fixture(scope="session")
def bootstrapped(shared_sandbox: sandboxes.Sandbox) -> Bootstrapped:
    """The shared sandbox, bootstrapped once for every test that reads it."""
    return bootstrap_sandbox(shared_sandbox)


@dataclass(frozen=True)
class Deployed:
    """A bootstrapped sandbox after its first `inv deploy --version v1`, with that run's output."""

    sandbox: sandboxes.Sandbox
    first_run: subprocess.CompletedProcess[str]


def deploy_sandbox(sandbox: sandboxes.Sandbox, version: str = "v1") -> Deployed:
    run = inv("deploy", "--version", version, "--config", str(sandbox.config_file), timeout=1500)
    assert run.returncode == 0, run.stdout + run.stderr
    return Deployed(sandbox, run)


@pytest.fixture(scope="session")
def deployed(bootstrapped: Bootstrapped) -> Deployed:
    """The shared sandbox with release v1 serving: for every e2e test that needs the running stack."""
    return deploy_sandbox(bootstrapped.sandbox)


@pytest.fixture()
def bootstrapped_host(bootstrapped: Bootstrapped) -> Iterator[RemoteHost]:
    """An SSH session to the bootstrapped shared sandbox (Docker is there)."""
    with open_host(load_config(bootstrapped.sandbox.config_file)) as remote:
        yield remote
