"""Daily spending limits, in LLM tokens (prompt + completion) since midnight in the service's time zone (TZ):
DAILY_TOKEN_QUOTA per user (admins are exempt) and DAILY_TOKEN_CEILING for the whole service.

A new discussion whose token_budget does not fit in what is left is refused; a running one is checked before
each turn and ends `quota_exceeded` once a limit is reached (a turn in progress finishes, so a limit can be
passed by at most one turn per running discussion).
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from service.settings import Settings

Db = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy

# What a token_usage row costs: cache hits are cheaper upstream, but they are tokens the provider bills.
TOKENS_SPENT = "coalesce(sum(prompt_tokens + completion_tokens), 0)"
_SPENT = f"SELECT {TOKENS_SPENT} FROM token_usage WHERE created_at >= "  # noqa: S608 - constant text
_SERVICE_TODAY = f"{_SPENT}$1"
_DAY_USAGE = (
    "SELECT u.is_admin, u.disabled_at IS NOT NULL AS disabled,"  # noqa: S608 - constant text
    f" ({_SPENT}$2 AND user_id = u.id) AS user_tokens, ({_SPENT}$2) AS service_tokens"
    " FROM users u WHERE u.id = $1"
)


class AccountDisabledError(Exception):
    """The account was disabled or deleted by the operator (its access token may still be unexpired)."""


class QuotaExceededError(Exception):
    """A daily limit leaves no room for this discussion; the message says which and when it resets."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class DayUsage:
    user_tokens: int
    service_tokens: int
    user_quota: int | None  # None: an admin, limited by the service's ceiling only
    service_ceiling: int
    resets_at: datetime.datetime

    @property
    def left(self) -> int:
        """Tokens a new discussion may still budget today."""
        service_left = self.service_ceiling - self.service_tokens
        user_left = service_left if self.user_quota is None else self.user_quota - self.user_tokens
        return max(min(user_left, service_left), 0)

    def refusal(self, token_budget: int, now: datetime.datetime) -> QuotaExceededError | None:
        """Why a discussion with this budget may not start now, or None when it may."""
        if token_budget <= self.left:
            return None
        wait = max(int((self.resets_at - now).total_seconds()), 1)
        resets = self.resets_at.strftime("%H:%M %Z").strip()
        if self.service_tokens >= self.service_ceiling:
            why = f"the service has spent its daily token ceiling ({self.service_ceiling}); it resets at {resets}"
        elif self.left == 0:
            why = f"your daily token quota ({self.user_quota}) is spent; it resets at {resets}"
        else:
            why = f"token_budget {token_budget} is more than the {self.left} tokens left today; lower it"
        return QuotaExceededError(why, wait)

    @property
    def reached(self) -> bool:
        """A limit is reached: a running discussion must not start another turn."""
        over_user = self.user_quota is not None and self.user_tokens >= self.user_quota
        return over_user or self.service_tokens >= self.service_ceiling


def day_start(now: datetime.datetime) -> datetime.datetime:
    """Midnight of `now`'s day, in its time zone."""
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def local_now() -> datetime.datetime:
    return datetime.datetime.now().astimezone()


async def day_usage(db: Db, settings: Settings, user_id: uuid.UUID, now: datetime.datetime) -> DayUsage:
    """Today's spending of this user and of the service; AccountDisabledError for a disabled or deleted user."""
    start = day_start(now)
    row = await db.fetchrow(_DAY_USAGE, user_id, start)
    if row is None or row["disabled"]:
        raise AccountDisabledError("this account is disabled; ask the operator")
    return DayUsage(
        user_tokens=int(row["user_tokens"]),
        service_tokens=int(row["service_tokens"]),
        user_quota=None if row["is_admin"] else settings.daily_token_quota,
        service_ceiling=settings.daily_token_ceiling,
        resets_at=start + datetime.timedelta(days=1),
    )


async def service_tokens_today(db: Db, now: datetime.datetime) -> int:
    """Tokens the whole service spent today (the /metrics gauge the ceiling alert reads)."""
    return int(await db.fetchval(_SERVICE_TODAY, day_start(now)))
