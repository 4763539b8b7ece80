"""`inv bootstrap`: a fresh Ubuntu/Debian CVM into a hardened Docker host, idempotently.

Order matters and is fixed here: the operating system, the appliance's directories and scripts,
access (account, sshd, firewall), Docker, then what needs Docker. A preflight refuses an unfit host
before the first change; the first failed step stops the run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import paramiko

from appliance.bootstrap.access import access_steps, docker_group_member
from appliance.bootstrap.docker_engine import docker_steps
from appliance.bootstrap.hardening import hardening_steps
from appliance.bootstrap.host_registry import host_registry_steps
from appliance.bootstrap.layout import host_record, layout_steps, service_steps
from appliance.bootstrap.preflight import preflight_problems
from appliance.bootstrap.system import system_steps
from appliance.config import Config
from appliance.errors import ConfigError, StepFailed
from appliance.executor import Executor, StepResult
from appliance.facts import HostFacts, gather_facts
from appliance.remote import open_host
from appliance.render import HostFile
from appliance.secrets import load_secrets
from appliance.steps import Step, WritesFiles


def operator_public_key(config: Config) -> str | None:
    """The public half of the config's SSH key, for the operator account (None without an account)."""
    settings = config.settings
    if settings.host.operator_user is None:
        return None
    if settings.hosts[0].key is None:
        raise ConfigError(f"{config.path}: host.operator_user needs hosts.key, whose public key the account gets")
    private = config.resolve(settings.hosts[0].key)
    public = Path(f"{private}.pub")
    if public.is_file():
        return public.read_text(encoding="utf-8").strip() + "\n"
    try:
        key = paramiko.PKey.from_path(private)
    except (OSError, paramiko.SSHException) as exc:
        raise ConfigError(
            f"{config.path}: hosts.key {private}: cannot read its public key ({exc}): add {public}"
        ) from None
    return f"{key.get_name()} {key.get_base64()} cvm-appliance-operator\n"


def bootstrap_steps(config: Config, facts: HostFacts, operator_key: str | None) -> list[Step]:
    """Every bootstrap step for this host, in order."""
    settings = config.settings
    return [
        *system_steps(settings, facts),
        *layout_steps(config, facts),
        *access_steps(settings, facts, operator_key),
        *hardening_steps(facts),
        *docker_steps(settings, facts),
        *host_registry_steps(settings),
        *docker_group_member(settings.host.operator_user),
        *service_steps(config),
    ]


# What `inv render` assumes of a host it does not contact: a common target with a current OpenSSH.
ASSUMED_FACTS = HostFacts(
    os_id="ubuntu",
    os_version="22.04",
    os_codename="jammy",
    os_name="Ubuntu 22.04 (assumed)",
    arch="x86_64",
    memory_mb=4096,
    disk_free_mb=40960,
    cpus=2,
    docker=None,
    compose=None,
    systemd=True,
    container=False,
    swap_mb=0,
)


def bootstrap_files(config: Config, facts: HostFacts = ASSUMED_FACTS) -> list[HostFile]:
    """The files bootstrap manages, taken from its own steps so the two cannot drift apart."""
    steps = bootstrap_steps(config, facts, operator_public_key(config))
    return [
        HostFile(item.path, item.content.decode(), item.mode)
        for step in steps
        if isinstance(step, WritesFiles)
        for item in step.written_files()
    ]


def bootstrap(
    config: Config, check: bool = False, diff: Callable[[str], None] | None = None
) -> tuple[HostFacts, list[StepResult]]:
    """Bring the config's host to the wanted state (or, with `check`, say what that would take)."""
    operator_key = operator_public_key(config)
    secrets = load_secrets(config.secrets_path)
    with open_host(config) as remote:
        facts = gather_facts(remote, config.settings.base_dir)
        problems = preflight_problems(config.settings.host, facts)
        if problems:
            raise StepFailed(
                f"{config.settings.hosts[0].target}: preflight: " + "; ".join(problems) + "; nothing was changed"
            )

        def login_check() -> None:
            open_host(config).close()

        executor = Executor(remote, check=check, redact=secrets.redact, diff=diff, login_check=login_check)
        results = executor.apply_all(bootstrap_steps(config, facts, operator_key))
        if results[-1].status != "failed":
            facts = gather_facts(remote, config.settings.base_dir)
            executor.apply(host_record(config.settings, facts))
        return facts, executor.results
