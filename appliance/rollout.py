"""Several app hosts (docs/deploy.md, "Several hosts"): which host goes when, and what each one ended with.

Pure: `waves` (the canary alone, then `batch` hosts at a time), each host's `HostOutcome` and the lines that
report them. Thin: `fan_out` runs one job per host, a thread each, so that a failed host never stops the others
(`inv bootstrap`); `roll` takes every host's lock in host order, then runs the waves one after another and stops
after the first wave with a failure, leaving the hosts not started as they were (`inv deploy`, `inv rollback`).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, TypeVar

from appliance.errors import ApplianceError, StepFailed
from appliance.executor import StepResult, StepWatcher, current_watcher, watching

T = TypeVar("T")
Status = Literal["ok", "failed", "not started"]


def waves(hosts: Sequence[T], batch: int) -> list[list[T]]:
    """The first host (the canary) alone, then the others `batch` at a time, in their order."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    if not hosts:
        return []
    rest = list(hosts[1:])
    return [[hosts[0]], *(rest[start : start + batch] for start in range(0, len(rest), batch))]


@dataclass(frozen=True)
class HostOutcome:
    """How one host ended: its step results, the reason it failed, and (deploy, rollback) the release it serves."""

    host: str
    status: Status
    results: list[StepResult] = field(default_factory=list)
    error: str = ""
    serving: str = ""  # "" when the task serves no release (bootstrap); "(none)" for a host never deployed
    summary: str = ""  # what the host is, for its table's heading (bootstrap: its facts)


def failed_outcome(host: str, results: Sequence[StepResult], serving: str = "") -> HostOutcome:
    """`ok` when no step failed, else `failed` with the first failed step's reason (the API's last log lines after
    a failed health gate, as one host's error shows them)."""
    failed = next((result for result in results if result.status == "failed"), None)
    if failed is None:
        return HostOutcome(host, "ok", list(results), serving=serving)
    return HostOutcome(host, "failed", list(results), f"{failed.step}: {failed.error or 'failed'}", serving)


def outcome_line(outcome: HostOutcome) -> str:
    """`app-1: ok, serves v2`, `app-2: failed (health gate: ...), serves v1`, `app-3: not started, serves v1`."""
    line = f"{outcome.host}: {outcome.status}"
    if outcome.error:
        line += f" ({outcome.error.splitlines()[0]})"
    return line + (f", serves {outcome.serving}" if outcome.serving else "")


def report_lines(outcomes: Sequence[HostOutcome]) -> list[str]:
    """One line per host, in host order."""
    return [outcome_line(outcome) for outcome in outcomes]


def require_all_ok(outcomes: Sequence[HostOutcome], what: str) -> None:
    """Raise a line naming the hosts that did not end ok, then each failed host's reason in full (the per-host
    lines are already printed)."""
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    skipped = [outcome.host for outcome in outcomes if outcome.status == "not started"]
    if failed:
        untouched = f"; not started: {', '.join(skipped)}" if skipped else ""
        reasons = "".join(f"\n{outcome.host}: {outcome.error}" for outcome in failed)
        raise StepFailed(f"{what} failed on {', '.join(outcome.host for outcome in failed)}{untouched}{reasons}")


class HostLines:
    """A StepWatcher for one of several hosts run at once: the task's watcher, with the host before each step."""

    def __init__(self, parent: StepWatcher, host: str) -> None:
        self.parent = parent
        self.host = host

    def started(self, step: str) -> None:
        self.parent.started(f"{self.host}: {step}")

    def command(self, verb: str, text: str) -> None:
        self.parent.command(verb, f"[{self.host}] {text}")

    def finished(self, result: StepResult) -> None:
        self.parent.finished(replace(result, step=f"{self.host}: {result.step}"))


def fan_out(jobs: Sequence[tuple[str, Callable[[], HostOutcome]]]) -> list[HostOutcome]:
    """Run each host's job in a thread of its own (its step lines labelled with the host) and wait for all; an
    error in one job is that host's failed outcome, never the others' stop. Outcomes in the jobs' order. Ctrl-C
    waits for the jobs under way, then raises KeyboardInterrupt."""
    outcomes, interrupted = _in_threads(jobs)
    if interrupted:
        raise KeyboardInterrupt
    return outcomes


def _in_threads(jobs: Sequence[tuple[str, Callable[[], HostOutcome]]]) -> tuple[list[HostOutcome], bool]:
    """fan_out's work: the outcomes, and whether Ctrl-C came while the threads ran."""
    parent = current_watcher()
    outcomes: list[HostOutcome | None] = [None] * len(jobs)

    def run(index: int, host: str, job: Callable[[], HostOutcome]) -> None:
        labelled = watching(HostLines(parent, host)) if parent is not None else contextlib.nullcontext()
        with labelled:
            try:
                outcomes[index] = job()
            except ApplianceError as exc:
                outcomes[index] = HostOutcome(host, "failed", error=str(exc))
            except Exception as exc:  # a bug on one host must still leave the others their run and report
                outcomes[index] = HostOutcome(host, "failed", error=f"unexpected {type(exc).__name__}: {exc}")

    threads = [
        threading.Thread(target=run, args=(index, host, job), name=f"host {host}")
        for index, (host, job) in enumerate(jobs)
    ]
    interrupted = False
    try:
        for thread in threads:
            thread.start()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: waiting for the hosts under way to finish their steps\n")
        interrupted = True  # the jobs not started have no outcome: a roll skips their hosts
    for thread in threads:
        while thread.is_alive():  # Ctrl-C cannot stop a host's commands half-way: let them end, then stop
            try:
                thread.join()
            except KeyboardInterrupt:
                if not interrupted:
                    sys.stderr.write("interrupted: waiting for the hosts under way to finish their steps\n")
                interrupted = True
    return [outcome for outcome in outcomes if outcome is not None], interrupted


class HostChange(Protocol):
    """One host's part of a deploy or rollback, ready to run (appliance/host_release.py's HostRelease)."""

    @property
    def host(self) -> str: ...

    def lock(self, wait: bool) -> None:
        """Take the host's deploy lock, or raise one line naming the host and the holder."""

    def unlock(self) -> None:
        """Release a lock this change took, changing nothing else (a later host's lock was held)."""

    def run(self) -> HostOutcome:
        """Apply the change under the lock held; audit it, release the lock."""

    def skip(self) -> HostOutcome:
        """The roll stopped before this host: audit that, release the lock; the host keeps its release."""


def lock_all(changes: Sequence[HostChange], wait: bool) -> None:
    """Every host's lock in host order, before any host changes; on a held one, release those taken and raise."""
    taken: list[HostChange] = []
    try:
        for change in changes:
            change.lock(wait)
            taken.append(change)
    except BaseException:
        for change in reversed(taken):
            change.unlock()
        raise


def roll(changes: Sequence[HostChange], batch: int, wait: bool = False) -> list[HostOutcome]:
    """Lock every host, then the canary alone, then `batch` at a time; the first wave with a failed host ends
    the roll and the hosts after it are skipped (keeping their release). Outcomes in host order. Ctrl-C ends it
    after the wave under way, the rest skipped, then raises KeyboardInterrupt."""
    lock_all(changes, wait)
    outcomes: dict[str, HostOutcome] = {}
    interrupted = False
    try:
        for wave in waves(changes, batch):
            done, interrupted = _in_threads([(change.host, change.run) for change in wave])
            outcomes.update((outcome.host, outcome) for outcome in done)
            if interrupted or any(outcome.status == "failed" for outcome in done):
                break
    finally:
        for change in changes:
            if change.host not in outcomes:
                outcomes[change.host] = change.skip()
    if interrupted:
        raise KeyboardInterrupt
    return [outcomes[change.host] for change in changes]
