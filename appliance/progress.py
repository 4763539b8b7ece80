"""Live progress of a transfer, per item (an image): bytes done/total, rate, ETA.

On a terminal a `rich.progress` bar per item, on the task's console (`live.console()`: rich nests the bars under
the running step's line); elsewhere (CI logs, a pipe) a plain line per item every `interval` seconds and one
when it ends, so a log shows a slow link without a line per chunk.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from appliance import live


@dataclass
class _Item:
    started: float
    done: int = 0
    total: int = 0
    said: float = 0.0


@dataclass
class TransferProgress:
    """`update(name, done, total)` as bytes move; `finish(name)` when an item is complete."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)  # for the plain lines
    interval: float = 10.0
    console: Console | None = None  # for the bars: the task's console unless given
    _items: dict[str, _Item] = field(default_factory=dict)
    _bar: Progress | None = None
    _tasks: dict[str, TaskID] = field(default_factory=dict)

    def __enter__(self) -> TransferProgress:
        console = self.console or live.console()
        if console.is_terminal:
            self._bar = Progress(
                TextColumn("  {task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, name: str, done: int, total: int) -> None:
        now = time.monotonic()
        item = self._items.setdefault(name, _Item(now, said=now))
        item.done, item.total = done, max(total, done)
        if self._bar is not None:
            if name not in self._tasks:
                self._tasks[name] = self._bar.add_task(name, total=item.total)
            self._bar.update(self._tasks[name], completed=done, total=item.total)
        elif now - item.said >= self.interval:
            item.said = now
            self.stream.write(f"  {name}: {line(item.done, item.total, now - item.started)}\n")
            self.stream.flush()

    def finish(self, name: str, outcome: str) -> None:
        """The item is done; `outcome` (e.g. "12 MB sent") ends its line."""
        item = self._items.get(name)
        if self._bar is not None:
            if name in self._tasks:
                self._bar.update(self._tasks[name], completed=item.total if item else 0)
            self._bar.console.print(f"  {name}: {outcome}", highlight=False, markup=False)
        else:
            self.stream.write(f"  {name}: {outcome}\n")
            self.stream.flush()


def line(done: int, total: int, seconds: float) -> str:
    """'45/120 MB, 2.1 MB/s, ETA 36 s': what a plain progress line says."""
    rate = done / seconds if seconds > 0 else 0.0
    eta = f"ETA {(total - done) / rate:.0f} s" if rate > 0 and total > done else "ETA ?"
    return f"{done / 1e6:.0f}/{total / 1e6:.0f} MB, {rate / 1e6:.1f} MB/s, {eta}"
