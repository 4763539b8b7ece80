"""What the operator reads at the end of a task: a summary table of step results."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from appliance.executor import StepResult

STATUSES = ("ok", "changed", "pending", "failed")


def summary_table(results: Sequence[StepResult], target: str) -> str:
    """A fixed-width table, one row a step, then the totals line; failures show their reason."""
    width = max([len("STEP"), *(len(result.step) for result in results)])
    lines = [f"{target}", f"  {'STEP':<{width}}  {'STATUS':<8} {'TIME':>7}  DETAIL"]
    for result in results:
        detail = result.error or "; ".join(result.actions)
        lines.append(f"  {result.step:<{width}}  {result.status:<8} {result.seconds:>6.2f}s  {detail}")
    lines.append("  " + totals(results))
    return "\n".join(lines)


def totals(results: Sequence[StepResult]) -> str:
    """'3 ok, 1 changed, 0 pending, 0 failed in 2.1s'."""
    counts: Counter[str] = Counter(result.status for result in results)
    elapsed = sum(result.seconds for result in results)
    return ", ".join(f"{counts[status]} {status}" for status in STATUSES) + f" in {elapsed:.1f}s"
