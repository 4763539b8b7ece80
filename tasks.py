"""cvm-appliance tasks: `inv --list` for the table of contents, `inv --help TASK` for a task's flags."""

from __future__ import annotations

from pathlib import Path

from invoke.collection import Collection
from invoke.context import Context
from invoke.tasks import task

from appliance import render as rendering
from appliance import sandbox as sandboxes
from appliance.cli import COMMON_HELP, load, one_line_errors, open_host
from appliance.facts import gather_facts
from appliance.secrets import ensure_generated, load_secrets


@task(help={**COMMON_HELP})
@one_line_errors
def config(c: Context, config: str | None = None, env: str | None = None, host: str | None = None) -> None:
    """Validate the config file and show the chosen environment's settings (secrets masked)."""
    loaded = load(config, env, host)
    secrets = load_secrets(loaded.secrets_path)
    print(f"{loaded.path}: valid; environments: {', '.join(loaded.environments)}; using {loaded.env}")
    print(loaded.settings.model_dump_json(indent=2))
    known = ", ".join(f"{name}={value}" for name, value in sorted(secrets.values.items())) or "none"
    print(f"secrets from {secrets.source} and the environment: {known}")


@task(
    help={
        **COMMON_HELP,
        "out": "folder to write into; files land at their host paths below it",
        "version": "release name used in paths and image tags",
        "reveal": "write secret values instead of masks (the files are then sensitive)",
    }
)
@one_line_errors
def render(
    c: Context,
    out: str,
    version: str = "preview",
    reveal: bool = False,
    config: str | None = None,
    env: str | None = None,
    host: str | None = None,
) -> None:
    """Write every file that would land on a host for this config, to read before deploying."""
    loaded = load(config, env, host)
    ensure_generated(loaded.secrets_path)
    files = rendering.host_files(loaded, load_secrets(loaded.secrets_path), version, reveal=reveal)
    for path in rendering.write_tree(files, Path(out)):
        print(path)


@task(help={**COMMON_HELP})
@one_line_errors
def facts(c: Context, config: str | None = None, env: str | None = None, host: str | None = None) -> None:
    """Connect to the host and show what it is: OS, CPU, memory, disk, Docker and Compose."""
    loaded = load(config, env, host)
    with open_host(loaded) as remote:
        print(f"{loaded.settings.hosts[0].target}: {gather_facts(remote).summary()}")


SANDBOX_HELP = {
    "name": "sandbox name; containers, volumes and files are named after it",
    "ssh_port": "port on 127.0.0.1 for SSH (0: any free port)",
    "http_port": "port on 127.0.0.1 for the sandbox's port 80 (0: any free port)",
    "https_port": "port on 127.0.0.1 for the sandbox's port 443 (0: any free port)",
    "config_out": "where to write the sandbox's appliance config",
}


@task(name="up", help=SANDBOX_HELP)
@one_line_errors
def sandbox_up(
    c: Context,
    name: str = "cvm-sandbox",
    ssh_port: int = 2222,
    http_port: int = 8080,
    https_port: int = 8443,
    config_out: str = "sandbox.toml",
) -> None:
    """Start a throwaway local Debian 12 "CVM" (systemd, sshd, room for Docker) and write its config."""
    spec = sandboxes.SandboxSpec(
        name, ssh_port=ssh_port, http_port=http_port, https_port=https_port, config_out=Path(config_out)
    )
    box = sandboxes.up(spec)
    print(f"sandbox {box.name} is running")
    print(f"  ssh:    {box.ssh_command()}")
    print(f"  http:   http://{box.address}:{box.http_port}/   https: https://{box.address}:{box.https_port}/")
    print(f"  config: {box.config_file}  (e.g. inv facts --config {box.config_file})")


@task(name="down", help={"name": SANDBOX_HELP["name"], "config_out": SANDBOX_HELP["config_out"]})
@one_line_errors
def sandbox_down(c: Context, name: str = "cvm-sandbox", config_out: str = "sandbox.toml") -> None:
    """Remove the sandbox: its container, Docker volume, key folder and config, by name."""
    removed = sandboxes.down(sandboxes.SandboxSpec(name, config_out=Path(config_out)))
    print("removed: " + (", ".join(removed) or f"nothing (no sandbox {name})"))


namespace = Collection(config, render, facts, Collection("sandbox", sandbox_up, sandbox_down))
