"""The test rig: the real sandbox CVM, made by the same code as `inv sandbox.up`."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance import sandbox as sandboxes
from appliance.config import Config, load_config
from appliance.remote import RemoteHost, connect

REPO = Path(__file__).resolve().parent.parent
# One prefix per test run, so two runs on a machine never touch each other's containers.
RUN_ID = os.environ.get("APPLIANCE_TEST_RUN") or f"cvmt-{secrets.token_hex(3)}"

SandboxFactory = Callable[[str], sandboxes.Sandbox]


def _spec(tmp_root: Path, suffix: str) -> sandboxes.SandboxSpec:
    return sandboxes.SandboxSpec(
        name=f"{RUN_ID}-{suffix}",
        ssh_port=0,
        http_port=0,
        https_port=0,
        state_root=tmp_root / "state",
        config_out=tmp_root / f"{suffix}.toml",
    )


@pytest.fixture(scope="session")
def sandbox_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxFactory]:
    """Start sandboxes by name for this run; all are removed at the end of the session."""
    root = tmp_path_factory.mktemp("sandboxes")
    specs: list[sandboxes.SandboxSpec] = []

    def start(suffix: str) -> sandboxes.Sandbox:
        spec = _spec(root, suffix)
        specs.append(spec)
        return sandboxes.up(spec, log=lambda line: None)

    yield start
    for spec in specs:
        sandboxes.down(spec)


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
