"""The operator's terminal while a task works: each step's line as it runs, completed when it ends.

On a terminal the running step shows with a spinner and its elapsed time (a rich Live display), and each
finished step is printed above it in its status colour. In a pipe or a CI log the same finished lines come
plain, one per step, with no control codes. `NO_COLOR` is honoured (rich reads it), and `-v` adds each
command. Other live displays (the image transfer's progress bar) share the one console, `console()`: rich
nests a Live started on it under the running step's line.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from appliance.executor import StepResult, current_watcher, watching
from appliance.report import STATUS_STYLES


@functools.cache
def _terminal() -> Console:
    # soft_wrap: a long line is the terminal's to wrap; rich's own wrapping at 80 columns in a pipe would
    # break "one line per step".
    return Console(highlight=False, soft_wrap=True)


def console() -> Console:
    """The console a task writes to: the running step display's, else the process's one."""
    watcher = current_watcher()
    return watcher.console if isinstance(watcher, StepLines) else _terminal()


def step_line(result: StepResult) -> Text:
    """`changed  packages  3.2s`, with the failure's reason after a failed step's time."""
    line = Text("  ")
    line.append(f"{result.status:<8}", STATUS_STYLES[result.status])
    line.append(f" {result.step}  ")
    line.append(f"{result.seconds:.1f}s", "dim")
    if result.error:
        line.append(f"  {result.error}", STATUS_STYLES["failed"])
    return line


class StepLines:
    """A StepWatcher that writes the step lines (see the module's docstring)."""

    def __init__(self, console: Console, verbose: bool = False) -> None:
        self.console = console
        self.verbose = verbose
        self.interactive = console.is_terminal and not console.is_dumb_terminal
        # Steps under way, by name: one at a time on one host; one per host when several run at once, each name
        # labelled with its host (appliance/rollout.py's HostLines).
        self._running: dict[str, tuple[Spinner, float]] = {}
        self._lock = threading.Lock()

    def started(self, step: str) -> None:
        with self._lock:
            self._running[step] = (Spinner("dots", style="cyan"), time.monotonic())

    def command(self, verb: str, text: str) -> None:
        if self.verbose:
            self.console.print(Text(f"      {verb}: {text}", "dim"))

    def finished(self, result: StepResult) -> None:
        with self._lock:
            self._running.pop(result.step, None)
        self.console.print(step_line(result))

    def __rich__(self) -> RenderableType:
        """What the Live display redraws (several times a second): each running step and its elapsed time."""
        with self._lock:
            running = list(self._running.items())
        now = time.monotonic()
        for step, (spinner, since) in running:
            spinner.update(text=Text.assemble(f" {step}  ", (f"{now - since:.0f}s", "dim")))
        return Group(*(spinner for _step, (spinner, _since) in running))


@contextlib.contextmanager
def step_lines(verbose: bool = False, terminal: Console | None = None) -> Iterator[StepLines]:
    """Show every step the executors apply inside this block, live on a terminal, plain lines elsewhere."""
    lines = StepLines(terminal or _terminal(), verbose)
    with watching(lines):
        if not lines.interactive:
            yield lines
            return
        # transient: the running line goes when the block ends; the finished lines printed above it stay.
        with Live(lines, console=lines.console, refresh_per_second=8, transient=True):
            yield lines
