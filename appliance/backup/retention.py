"""Which backups to keep: a pure function of the backups, the clock and the policy."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import partial

from appliance.backup.manifest import FULL
from appliance.backup.settings import Policy

# Every backup younger than this is kept (a pre-deploy or pre-restore backup must outlive the next
# backup of the same day); an incomplete one (no manifest) that young may still be uploading.
RECENT = timedelta(days=1)


@dataclass(frozen=True)
class Stored:
    """A backup in the bucket: its id, when it was taken, whether its manifest is there, whether a drill passed."""

    id: str
    created: datetime
    complete: bool
    verified: bool
    scope: str = FULL


@dataclass(frozen=True)
class Decision:
    keep: list[str]
    delete: list[str]


def _month_back(day: date, months: int) -> tuple[int, int]:
    index = day.year * 12 + day.month - 1 - months
    return index // 12, index % 12 + 1


def _same_week(week: tuple[int, int], day: date) -> bool:
    return (day.isocalendar()[0], day.isocalendar()[1]) == week


def _same_month(month: tuple[int, int], day: date) -> bool:
    return (day.year, day.month) == month


def horizon_days(policy: Policy) -> int:
    """How old, in days, a backup the calendar keeps can be (plus a day): the bucket's lifecycle rule expires
    objects after this, so it never takes what `decide` keeps, but the newest backups once none is younger."""
    return max(policy.daily, 7 * policy.weekly, 31 * policy.monthly) + 1


def decide(backups: Sequence[Stored], now: datetime, policy: Policy) -> Decision:
    """Keep every backup younger than a day, the newest complete full backup of each of the last `daily`
    days, `weekly` ISO weeks and `monthly` months (calendar, in UTC), the newest complete full backup, the
    newest verified one and the newest Redis-only one; delete the rest (Redis-only backups live a day)."""
    newest_first = sorted((b for b in backups if b.complete), key=lambda b: b.created, reverse=True)
    complete = [b for b in newest_first if b.scope == FULL]
    keep: set[str] = set()
    redis_only = next((b for b in newest_first if b.scope != FULL), None)
    if redis_only is not None:
        keep.add(redis_only.id)

    def newest(match: Callable[[date], bool]) -> None:
        found = next((b for b in complete if match(b.created.date())), None)
        if found is not None:
            keep.add(found.id)

    today = now.date()
    for offset in range(policy.daily):
        day = today - timedelta(days=offset)
        newest(partial(operator.eq, day))
    for offset in range(policy.weekly):
        then = (today - timedelta(weeks=offset)).isocalendar()
        week = (then[0], then[1])
        newest(partial(_same_week, week))
    for offset in range(policy.monthly):
        month = _month_back(today, offset)
        newest(partial(_same_month, month))
    if complete:
        keep.add(complete[0].id)
    verified = next((b for b in complete if b.verified), None)
    if verified is not None:
        keep.add(verified.id)
    for backup in backups:
        if now - backup.created < RECENT:
            keep.add(backup.id)
    ordered = sorted(backups, key=lambda b: b.created)
    return Decision([b.id for b in ordered if b.id in keep], [b.id for b in ordered if b.id not in keep])
