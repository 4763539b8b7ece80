"""One host's deploy or rollback as it runs: its steps applied under the host's deploy lock, an audit line, the
failure handling that keeps the previous release serving (the procedure that plans it: appliance/deploy.py)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from appliance import procedure
from appliance.errors import ApplianceError
from appliance.executor import Executor, StepResult
from appliance.lock import audit_entry, operator, release_lock
from appliance.releases import Release
from appliance.remote import RemoteHost
from appliance.rollout import HostOutcome, failed_outcome
from appliance.steps import Always, Step
from appliance.warm import ApiUp


@dataclass(frozen=True)
class SwitchTraffic(Always):
    """The phase after which traffic has moved: a failure before it leaves the previous release serving."""


@dataclass
class HostRelease:
    """One host's deploy or rollback, ready to run: its session, executor and steps, applied under the host's
    deploy lock with an audit line (rollout.HostChange: `inv deploy` and `inv rollback` on several hosts)."""

    remote: RemoteHost
    executor: Executor
    command: str
    release: Release
    previous: Release | None
    steps: list[Step]
    announce: Callable[[Mapping[str, object], str], None]
    host: str = ""
    started: float = 0.0

    def lock(self, wait: bool = False) -> None:
        self.started = time.time()
        holder = {"who": operator(), "command": self.command, "version": self.release.version, "since": self.started}
        procedure.take_lock(self.remote, self.release.settings, holder, wait)

    def unlock(self) -> None:
        self.remote.run(release_lock(self.release.settings))

    def apply(self) -> list[StepResult]:
        """Apply the steps (the lock held); after a failed gate, take the unhealthy API away and say why; after a
        failure before traffic moved, the serving release's stack back."""
        executor, steps, remote, release = self.executor, self.steps, self.remote, self.release
        results = executor.apply_all(steps)
        # apply_all stops after the first failure: the results pair with the first steps.
        applied = list(zip(steps, results, strict=False))
        failed = next(((step, result) for step, result in applied if result.status == "failed"), None)
        if failed is not None and isinstance(failed[0], ApiUp):
            # Traffic never moved: take the unhealthy API away and show why it failed.
            failed[1].error += "\n" + executor.redact(procedure.remove_failed_api(remote, release))
        if failed is not None and not self.moved() and self.previous is not None:
            procedure.restore_stack(remote, self.previous)
        return results

    def moved(self) -> bool:
        """Whether traffic moved to the release (its switch step ran)."""
        applied = zip(self.steps, self.executor.results, strict=False)
        return any(isinstance(step, SwitchTraffic) and result.status == "changed" for step, result in applied)

    def finish(self, outcome: str) -> None:
        """The outcome appended to the audit log, the lock released, the outcome announced."""
        failure = next((result for result in self.executor.results if result.status == "failed"), None)
        entry = audit_entry(
            self.command,
            version=self.release.version,
            previous=self.previous.version if self.previous else None,
            result=outcome,
            seconds=round(time.time() - self.started, 1),
        )
        procedure.record_and_unlock(self.remote, self.release.settings, entry)
        if outcome != "not started":
            self.announce(entry, f"{failure.step}: {failure.error.splitlines()[0]}" if failure else "")

    def serving(self) -> str:
        """The release this host serves now."""
        if self.moved():
            return self.release.version
        return self.previous.version if self.previous else "(none)"

    def run(self) -> HostOutcome:
        """`apply` under the lock already held, then `finish`: rollout.HostChange.run. An error between steps (the
        SSH session lost) is this host's failure, with the steps it got through."""
        finished, error = False, ""
        try:
            self.apply()
            finished = True
        except ApplianceError as exc:
            error = str(exc)
        finally:
            failed = any(result.status == "failed" for result in self.executor.results)
            self.finish("failed" if failed or error else "ok" if finished else "interrupted")
        outcome = failed_outcome(self.host, self.executor.results, self.serving())
        return dataclasses.replace(outcome, status="failed", error=error) if error else outcome

    def skip(self) -> HostOutcome:
        """The roll stopped before this host: audited as not started, lock released; it keeps its release."""
        self.finish("not started")
        return HostOutcome(self.host, "not started", serving=self.serving())


def run_locked(change: HostRelease, wait: bool = False) -> list[StepResult]:
    """Apply a host's steps under its deploy lock, append the outcome to the audit log, always unlock, announce."""
    change.lock(wait)
    finished = False
    try:
        results = change.apply()
        finished = True
        return results
    finally:
        failure = next((result for result in change.executor.results if result.status == "failed"), None)
        change.finish("failed" if failure else "ok" if finished else "interrupted")


def check_results(change: HostRelease) -> list[StepResult]:
    """check mode: what each step would do, nothing locked or changed."""
    return change.executor.apply_all(change.steps)
