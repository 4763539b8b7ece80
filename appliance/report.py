"""What the operator reads at the end of a task: a summary table of step results."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from rich.text import Text

from appliance.executor import StepResult

STATUSES = ("ok", "changed", "pending", "failed")
STATUS_STYLES = {"ok": "green", "changed": "yellow", "pending": "cyan", "failed": "bold red"}


def summary_text(results: Sequence[StepResult], target: str) -> Text:
    """A fixed-width table, one row a step, then the totals line; failures show their reason. Each status
    carries its colour (shown only where the terminal has colour)."""
    width = max([len("STEP"), *(len(result.step) for result in results)])
    table = Text(f"{target}\n  {'STEP':<{width}}  {'STATUS':<8} {'TIME':>7}  DETAIL\n")
    for result in results:
        detail = result.error or "; ".join(result.actions)
        table.append(f"  {result.step:<{width}}  ")
        table.append(f"{result.status:<8}", STATUS_STYLES[result.status])
        table.append(f" {result.seconds:>6.2f}s  {detail}\n")
    table.append("  " + totals(results))
    return table


def summary_table(results: Sequence[StepResult], target: str) -> str:
    """The summary table as plain text."""
    return summary_text(results, target).plain


def totals(results: Sequence[StepResult]) -> str:
    """'3 ok, 1 changed, 0 pending, 0 failed in 2.1s'."""
    counts: Counter[str] = Counter(result.status for result in results)
    elapsed = sum(result.seconds for result in results)
    return ", ".join(f"{counts[status]} {status}" for status in STATUSES) + f" in {elapsed:.1f}s"
