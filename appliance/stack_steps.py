"""The long-lived stack's steps in a deploy or rollback: Compose only for the services whose definition differs
from their running container, and the monitoring files published with a reload instead of a recreate.

A Compose v1 `up` that changes nothing still costs seconds, and a recreate more: a same-commit redeploy, or a
rollback between releases of the same image, should cost neither (docs/deploy.md, steps 5 and 9).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from appliance import release_commands as commands
from appliance.releases import Release
from appliance.steps import Action, Facts, Note, Run


@dataclass(frozen=True)
class _ServicesByHash:
    """A step over the release's Compose services that reads each one's definition hash and its running container's."""

    release: Release

    def probes(self) -> Mapping[str, str]:
        return {"defined": commands.defined_hashes(self.release), "running": commands.running_hashes(self.release)}


def _differing(facts: Facts, leave: tuple[str, ...] = ()) -> tuple[list[str], tuple[str, ...]]:
    """(every service that differs, those of them the release defines but `leave`): what `up` must be given."""
    changed = commands.stack_changes(facts["defined"].stdout, facts["running"].stdout)
    defined = commands.defined_services(facts["defined"].stdout)
    return changed, tuple(name for name in changed if name in defined and name not in leave)


@dataclass(frozen=True)
class StackUp(_ServicesByHash):
    """A deploy's stack before the switch: every service but nginx as the new release defines it, then the
    databases healthy. Compose runs only for the services that differ (or all, when the hashes cannot be read)."""

    name = "stack up"

    def plan(self, facts: Facts) -> list[Action]:
        if not facts["defined"].ok:  # Compose's own error then comes from the `up`
            return [Run(commands.stack_up(self.release), "start")]
        changed, services = _differing(facts, leave=("nginx",))
        # The definition, kept for the release stack step (here and in a rollback to this release).
        save = " && " + commands.save_hashes(self.release, facts["defined"].stdout)
        if services or [name for name in changed if name != "nginx"]:  # orphans alone: an `up` removes them
            return [Run(commands.stack_up(self.release, services) + save, f"start {', '.join(changed)}")]
        settled = commands.seed_monitoring(self.release) + commands.stack_settled(self.release) + save
        return [Run(settled, "every service already runs as the release defines it; databases healthy")]


@dataclass(frozen=True)
class MonitoringFiles:
    """The release's monitoring files into the folder Prometheus, Alertmanager and the relay read; only what
    changed is copied, and only its readers are reloaded (the relay restarted)."""

    release: Release

    name = "monitoring files"

    def probes(self) -> Mapping[str, str]:
        return {"changed": commands.monitoring_changes(self.release)}

    def plan(self, facts: Facts) -> list[Action]:
        changed = [name for name in facts["changed"].stdout.split() if name in commands.MONITORING_READERS]
        if not changed:
            return [Note("shared/monitoring already holds the release's files")]
        readers = sorted({commands.MONITORING_READERS[name] for name in changed})
        why = f"{', '.join(changed)}; {', '.join(readers)} told"
        return [Run(commands.publish_monitoring(self.release, changed), why)]


@dataclass(frozen=True)
class ReleaseStack(_ServicesByHash):
    """The rest of the release's stack (relay, stand-ins, monitoring) as the release defines it, after a switch.
    Compose runs only for the services whose definition hash differs from their running container's; the
    definition is the one the release's deploy saved while its files are unchanged (saved_or_defined_hashes)."""

    name = "release stack"

    def probes(self) -> Mapping[str, str]:
        return {**super().probes(), "defined": commands.saved_or_defined_hashes(self.release)}

    def plan(self, facts: Facts) -> list[Action]:
        if not facts["defined"].ok:  # Compose's own error then comes from the `up`
            return [Run(commands.release_stack(self.release), "every service as the release defines it")]
        changed, services = _differing(facts)
        if not changed:
            return [Note("every service already runs as the release defines it")]
        return [Run(commands.release_stack(self.release, services), f"{', '.join(changed)} as the release defines it")]
