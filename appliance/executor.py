"""The one executor: gathers a step's facts, asks the step for a plan, applies it, records the outcome.

A step whose plan is empty is `ok`; one whose actions all succeed is `changed`; in check mode a
non-empty plan is `pending` and nothing runs. The first `failed` step stops the run, so no step
acts on a host that an earlier step left half-configured.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal, Protocol

from appliance.errors import ApplianceError
from appliance.shell import sh
from appliance.steps import Action, Fact, Forward, Note, Run, Step, Stream, Transfer, Upload, VerifyLogin

Status = Literal["ok", "changed", "pending", "failed"]
OnProgress = Callable[[str, int, int], None]  # a transfer's progress: the item's name, bytes done, bytes in all


class Host(Protocol):
    """What the executor needs of a host (appliance.remote.RemoteHost is the real one)."""

    def run(self, command: str, timeout: int | None = None) -> _Result: ...

    def upload(self, path: str, content: bytes, mode: int, owner: str, group: str) -> _Result: ...

    def stream(self, command: str, chunks: Iterable[bytes], progress: Callable[[int], None]) -> _Result: ...

    def forward(self, port: int, transfer: Transfer) -> _Result: ...


class _Result(Protocol):
    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...

    @property
    def exit_code(self) -> int: ...


@dataclass
class StepResult:
    """The outcome of one step on one host."""

    step: str
    status: Status
    seconds: float
    actions: list[str] = field(default_factory=list)
    error: str = ""


class StepWatcher(Protocol):
    """Told of each step as it starts and ends, and of each command (appliance.live: the operator's terminal)."""

    def started(self, step: str) -> None: ...

    def command(self, verb: str, text: str) -> None: ...

    def finished(self, result: StepResult) -> None: ...


# A context variable rather than an Executor argument: the tasks' procedures (bootstrap, deploy, ...) make
# their executors deep inside, and the terminal is the task's, not the procedure's.
_watcher: ContextVar[StepWatcher | None] = ContextVar("step_watcher", default=None)


@contextlib.contextmanager
def watching(watcher: StepWatcher) -> Iterator[StepWatcher]:
    """Tell `watcher` about every step that any Executor applies inside this block."""
    token = _watcher.set(watcher)
    try:
        yield watcher
    finally:
        _watcher.reset(token)


def current_watcher() -> StepWatcher | None:
    return _watcher.get()


def describe(action: Action) -> str:
    """A one-line account of an action for plans and summaries."""
    if isinstance(action, Upload):
        return f"write {action.path} ({action.why or 'update'}, mode {action.mode:o})"
    if isinstance(action, Forward):
        return action.transfer.summary()
    return action.why


def command_of(action: Action) -> str:
    """What an action runs, for `-v`: its command, or its account when it is not one ("" for a Note)."""
    if isinstance(action, (Run, Stream)):
        return action.command
    return "" if isinstance(action, Note) else describe(action)


def unified_diff(path: str, old: str | None, new: str) -> str:
    """A unified diff of a managed file, from what the host has to what it will have."""
    lines = difflib.unified_diff(
        (old or "").splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile=f"{path} (host)" if old is not None else "/dev/null",
        tofile=f"{path} (wanted)",
    )
    return "".join(lines)


def failure_reason(stdout: str, stderr: str, exit_code: int) -> str:
    """A failed command's reason: the last line of its error output (else of its output), else its exit status.
    Compose v1's `run` logs the one-off container's exit status as a line of its own after the container's output
    (`1`): a line that says only the status is not the reason, the one before it is (a migration's, say)."""
    lines = (stderr.strip() or stdout.strip()).splitlines()
    if len(lines) > 1 and lines[-1].strip() == str(exit_code):
        lines.pop()
    return lines[-1] if lines else f"exit {exit_code}"


def probe_script(probes: Mapping[str, str]) -> str:
    """One command that runs every probe and prints, per probe, base64(output + exit status) on a line."""
    parts = []
    for command in probes.values():
        # A subshell per probe, so a probe's own `exit` ends only that probe.
        captured = f'out=$( ( {command} ) 2>/dev/null; rc=$?; echo; echo "rc=$rc" )'
        parts.append(f"{captured}; printf '%s' \"$out\" | base64 -w0; echo")
    return "; ".join(parts)


def parse_probe_output(probes: Mapping[str, str], stdout: str) -> dict[str, Fact]:
    """Facts from the output of `probe_script(probes)`."""
    lines = stdout.splitlines()
    if len(lines) != len(probes):
        raise ApplianceError(f"probe output has {len(lines)} lines for {len(probes)} probes")
    facts = {}
    for name, line in zip(probes, lines, strict=True):
        decoded = base64.b64decode(line).decode("utf-8", errors="replace")
        head, _, status = decoded.rpartition("\n")
        facts[name] = Fact(head.removesuffix("\n"), int(status.removeprefix("rc=")))
    return facts


def read_facts(host: Host, probes: Mapping[str, str]) -> dict[str, Fact]:
    """Run every probe in one round trip; each fact keeps its own output and exit status."""
    if not probes:
        return {}
    result = host.run(probe_script(probes))
    if result.exit_code != 0:
        raise ApplianceError(f"could not read facts: {result.stderr.strip() or 'exit ' + str(result.exit_code)}")
    return parse_probe_output(probes, result.stdout)


@dataclass(eq=False)
class Executor:
    """Applies steps to one host and keeps their results."""

    host: Host
    check: bool = False
    redact: Callable[[str], str] = str
    diff: Callable[[str], None] | None = None
    login_check: Callable[[], None] | None = None
    progress: OnProgress | None = None
    results: list[StepResult] = field(default_factory=list, init=False)

    def apply(self, step: Step) -> StepResult:
        """Bring the host to what `step` wants (or, in check mode, say what that would take)."""
        started = time.monotonic()
        watcher = _watcher.get()
        if watcher is not None:
            watcher.started(step.name)
        probes = step.probes()
        self._tell("probe", probes.values())
        try:
            actions = step.plan(read_facts(self.host, probes))
        except ApplianceError as exc:
            return self._record(step, "failed", started, [], self.redact(str(exc)))
        described = [describe(action) for action in actions]
        if all(isinstance(action, Note) for action in actions):
            return self._record(step, "ok", started, described)
        if self.diff is not None:
            self._show_diffs(actions)
        if self.check:
            self._tell("would run", map(command_of, actions))
            return self._record(step, "pending", started, described)
        for action, text in zip(actions, described, strict=True):
            self._tell("run", [command_of(action)])
            error = self._act(action)
            if error:
                return self._record(step, "failed", started, described, self.redact(f"{text}: {error}"))
        # Described again: a transfer's line says what travelled only once it ran.
        return self._record(step, "changed", started, [describe(action) for action in actions])

    def apply_all(self, steps: Iterable[Step]) -> list[StepResult]:
        """Apply steps in order, stopping after the first failure."""
        for step in steps:
            if self.apply(step).status == "failed":
                break
        return self.results

    def _act(self, action: Action) -> str:
        """Carry out one action; the reason it failed, or "" when it succeeded."""
        if isinstance(action, Note):
            return ""
        if isinstance(action, VerifyLogin):
            return self._verify_login(action)
        if isinstance(action, Run):
            outcome = self.host.run(action.command)
        elif isinstance(action, Stream):
            outcome = self.host.stream(action.command, action.source.chunks(), self._progress_of(action))
        elif isinstance(action, Forward):
            outcome = self.host.forward(action.port, action.transfer)
        else:
            outcome = self.host.upload(action.path, action.content, action.mode, action.owner, action.group)
        if outcome.exit_code == 0:
            return ""
        return failure_reason(outcome.stdout, outcome.stderr, outcome.exit_code)

    def _progress_of(self, action: Stream) -> Callable[[int], None]:
        report, total = self.progress, action.source.size
        if report is None:
            return lambda done: None
        return lambda done: report(action.why, done, total)

    def _verify_login(self, action: VerifyLogin) -> str:
        if self.login_check is None:
            return ""
        for attempt in range(action.attempts):
            try:
                self.login_check()
                return ""
            except ApplianceError as exc:
                failure = exc
                if attempt + 1 < action.attempts:
                    time.sleep(1)
        undone = self.host.run(action.undo)
        restored = "previous state restored" if undone.exit_code == 0 else "RESTORE FAILED: fix it by hand"
        return f"new SSH logins failed ({failure}); {restored}"

    def _show_diffs(self, actions: list[Action]) -> None:
        assert self.diff is not None
        for action in actions:
            if isinstance(action, Upload):
                current = self.host.run(sh("cat", "--", action.path))
                old = current.stdout if current.exit_code == 0 else None
                text = unified_diff(action.path, old, action.content.decode("utf-8", errors="replace"))
                if text:
                    self.diff(self.redact(text))

    def _tell(self, verb: str, commands: Iterable[str]) -> None:
        watcher = _watcher.get()
        if watcher is not None:
            for text in commands:
                if text:
                    watcher.command(verb, self.redact(text))

    def _record(self, step: Step, status: Status, started: float, actions: list[str], error: str = "") -> StepResult:
        result = StepResult(step.name, status, time.monotonic() - started, actions, error)
        self.results.append(result)
        watcher = _watcher.get()
        if watcher is not None:
            watcher.finished(result)
        return result
