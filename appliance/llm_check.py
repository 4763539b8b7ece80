"""`inv llm.check` and deploy's preflight warning: `python3 -m service.llm_check` run on the host, inside an API
container (which has the keys and the route to the upstream), so each key of the pool is tried from where the
service really runs. The service prints one masked line per key; exit 0 when one is usable, non-zero otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from appliance.config import Config
from appliance.errors import StepFailed
from appliance.releases import Release, current_release
from appliance.remote import open_host
from appliance.steps import Action, Facts, Note

CHECK = ("python3", "-m", "service.llm_check")


def check_command(release: Release) -> str:
    """The check in the release's running API container."""
    return release.compose("exec", "-T", "api", *CHECK, api=True)


def preflight_command(release: Release) -> str:
    """The check in a one-off container of the release about to serve: its image, its keys, before any traffic."""
    return release.compose("run", "--rm", "--no-deps", "-T", "api", *CHECK, api=True)


def verdicts_line(stdout: str, exit_code: int) -> str:
    """The check's outcome on one line for deploy's summary; a warning whenever no key is known to be usable."""
    verdicts = "; ".join(line.strip() for line in stdout.splitlines() if line.strip())
    if exit_code == 0:
        return verdicts
    if verdicts:
        return f"warning: no usable LLM key: {verdicts} (inv llm.check to try again)"
    return f"warning: LLM keys not checked (exit {exit_code}; is the release on the host?)"


@dataclass(frozen=True)
class LlmKeysWarning:
    """Deploy's preflight look at the new release's LLM keys: it shows one line and never stops the deploy."""

    release: Release
    name: str = "LLM keys"

    def probes(self) -> Mapping[str, str]:
        return {"verdicts": preflight_command(self.release)}

    def plan(self, facts: Facts) -> list[Action]:
        found = facts["verdicts"]
        return [Note(verdicts_line(found.stdout, found.exit_code))]


def run_check(config: Config) -> tuple[str, bool]:
    """The verdict lines of the serving release's keys, and whether one of them is usable."""
    target = config.settings.hosts[0].target
    with open_host(config) as remote:
        release = current_release(remote, config.settings)
        if release is None:
            raise StepFailed(f"{target}: nothing deployed yet: run inv deploy")
        result = remote.run(check_command(release), timeout=120)
    if result.exit_code != 0 and not result.stdout.strip():
        said = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise StepFailed(f"{target}: llm check: exit {result.exit_code}: {said} (is the API running? inv status)")
    return result.stdout.rstrip(), result.exit_code == 0
