"""Runs discussions: rounds of agent turns under combined limits, inside the worker that owns the lease.

A discussion runs as a background task in the worker that created it (or that later claimed it).
The owner renews a lease row in PostgreSQL; if the worker dies, the lease expires and any worker's
reaper claims and resumes the discussion from its persisted messages. Messages are keyed by
(discussion_id, turn_index), so a resumed run never stores a completed turn twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service import discussions, quota
from service.agents import leases
from service.agents.presets import MODERATOR, ROLES, Role, speaker_cue, system_prompt
from service.agents.slots import AgentSlots
from service.agents.turn_events import TurnEvents, announce_message
from service.db import DATABASE_ERRORS
from service.llm import FailureCategory, LlmClient, LlmError, Usage
from service.metrics import AGENT_TURN_DURATION, DISCUSSION_DURATION
from service.settings import Settings
from service.streaming import FINISHED, EventLog

log = logging.getLogger(__name__)

STOP_RECANCEL_SECONDS = 0.5
# How often a run reads its status while it runs: the stop's pub/sub signal is the fast path, this the bound.
STOP_POLL_SECONDS = 0.5
# Which failure explains a discussion whose every agent turn failed, most telling first: the pool's own state
# (the operator must act) before passing conditions, before faults of one turn.
TELLING_FAILURES: tuple[FailureCategory, ...] = (
    "balance",
    "auth",
    "rate_limit",
    "bad_request",
    "server",
    "stream_error",
    "malformed",
    "cut",
    "connection",
    "timeout",
)


@dataclass(frozen=True)
class TurnFailure:
    category: FailureCategory | None  # None: read back from a stored message when a run is resumed
    error: str


@dataclass
class Run:
    """One discussion being run by this worker."""

    id: uuid.UUID
    user_id: uuid.UUID
    topic: str
    panel: list[str]
    max_rounds: int
    token_budget: int
    tokens_used: int
    created_at: float
    transcript: list[dict[str, str]] = field(default_factory=list)
    done_turns: set[int] = field(default_factory=set)
    agents_completed: int = 0  # agent turns (not the moderator's) that completed
    agent_failures: list[TurnFailure] = field(default_factory=list)
    deadline: float = 0.0  # event-loop time at which WORKFLOW_TIMEOUT ends the discussion
    # The user's stop ends the speaking turn (its partial message is kept) and then the run. Independent of a
    # release (shutdown, lease lost), which cancels the whole run: a stop must reach a run whatever it was told.
    stop_requested: bool = False
    released: bool = False
    task: asyncio.Task[None] | None = None
    speaking: asyncio.Task[Usage] | None = None

    def count_agent_turn(self, message: dict[str, Any], category: FailureCategory | None) -> None:
        if message["status"] == "completed":
            self.agents_completed += 1
        elif message["status"] == "failed":
            self.agent_failures.append(TurnFailure(category, message["error"] or "no reason given"))


class _Stopped(Exception):
    """The user stopped the discussion."""


class _OutOfTime(Exception):
    """WORKFLOW_TIMEOUT is reached."""


class _OverQuota(Exception):
    """The user's daily token quota or the service's daily ceiling is reached."""


class _AllAgentsFailed(Exception):
    """Every agent turn failed: there is nothing for the moderator to weigh. The message says why."""


def stop_channel(prefix: str) -> str:
    """The pub/sub channel on which every worker hears which discussion to stop."""
    return f"{prefix}discussion-stop"


class Orchestrator:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        settings: Settings,
        llm: LlmClient,
        slots: AgentSlots,
        events: EventLog,
        worker_id: str,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._settings = settings
        self._llm = llm
        self._slots = slots
        self._events = events
        self.worker_id = worker_id
        self._runs: dict[uuid.UUID, Run] = {}  # this worker's live runs (a released one is gone from here)
        # Launched, still loading (held here until they are in _runs): the reaper must not launch them twice.
        self._starting: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._background: list[asyncio.Task[None]] = []
        self._reaper: asyncio.Task[None] | None = None
        self._standby = False  # service/standby.py: a warm API's workers run nothing
        self._stop_channel = stop_channel(settings.redis_key_prefix)

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._background = [asyncio.create_task(self._listen_stops())]
        self.wake()

    def wake(self) -> None:
        """Run discussions (again): the reaper claims those that need an owner."""
        self._standby = False
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap_forever())

    async def standby(self) -> int:
        """Hand every running discussion over, as on shutdown, and claim none until wake(); how many went."""
        self._standby = True
        return await self._release_runs([self._reaper] if self._reaper else [])

    async def close(self) -> None:
        """Hand running discussions back: cancel them and expire their leases so another worker resumes."""
        self._standby = True
        await self._release_runs([*self._background, *([self._reaper] if self._reaper else [])])

    async def _release_runs(self, background: list[asyncio.Task[None]]) -> int:
        for task in background:
            task.cancel()
        runs = list(self._runs.values())
        for run in runs:
            self._release(run)
        # Bounded wait: a cancel swallowed inside a Redis read must not stall the worker's shutdown.
        pending = [r.task for r in runs if r.task] + background
        if pending:
            await asyncio.wait(pending, timeout=5)
        await leases.expire(self._pool, self.worker_id)
        return len(runs)

    def launch(self, discussion_id: uuid.UUID) -> None:
        """Start running a discussion whose lease this worker holds."""
        self._starting[discussion_id] = asyncio.create_task(self._run(discussion_id))

    async def request_stop(self, discussion_id: uuid.UUID) -> None:
        """Tell whichever worker runs the discussion to stop it (it may be this one)."""
        await self._redis.publish(self._stop_channel, str(discussion_id))

    def _stop(self, run: Run) -> None:
        """The user's stop. Only the speaking part is cancelled, so a message being persisted is never cut short;
        between turns the flag ends the run at the next check."""
        if run.stop_requested:
            return
        run.stop_requested = True
        if run.speaking:
            _cancel_until_done(run.speaking)

    def _release(self, run: Run) -> None:
        """Cancel the whole run; another worker, or this one's reaper, resumes it from the persisted messages. It
        leaves `_runs` at once, so a reclaim starts a fresh run here instead of counting on the one going away."""
        if self._runs.get(run.id) is run:
            del self._runs[run.id]
        if not run.released and run.task:
            run.released = True
            _cancel_until_done(run.task)

    # --- running ------------------------------------------------------------------------------
    async def _run(self, discussion_id: uuid.UUID) -> None:
        try:
            run = await self._load(discussion_id)
        finally:
            self._starting.pop(discussion_id, None)
        if run is None:
            return
        if self._standby:  # created through a request that reached a standby API: another release runs it
            await leases.expire(self._pool, self.worker_id, discussion_id)
            return
        run.task = asyncio.current_task()
        self._runs[run.id] = run
        try:
            await self._run_to_the_end(run)
        finally:
            if self._runs.get(run.id) is run:  # else released, perhaps replaced by a newer run of the discussion
                del self._runs[run.id]

    async def _run_to_the_end(self, run: Run) -> None:
        heartbeat = asyncio.create_task(self._renew_lease(run))
        watchdog = asyncio.create_task(self._watch_for_stop(run))
        status = "failed"
        verdict: dict[str, Any] | None = None
        error: str | None = None
        # Measured from creation, so a resumed discussion does not get a fresh WORKFLOW_TIMEOUT.
        left = run.created_at + self._settings.workflow_timeout - time.time()
        run.deadline = asyncio.get_running_loop().time() + left
        try:
            verdict = await self._run_turns(run)
            status = "completed"
        except _OutOfTime:
            status = "timed_out"
        except (_Stopped, quota.AccountDisabledError):  # disabling an account stops its discussions
            status = "stopped"
        except _OverQuota:
            status = "quota_exceeded"
        except _AllAgentsFailed as exc:
            error = str(exc)
        except Exception:
            log.exception("discussion %s failed", run.id)
            error = "the service hit an internal error running this discussion; its log has the details"
        finally:
            # A CancelledError (release) passes through: the lease expires and another worker resumes.
            heartbeat.cancel()
            watchdog.cancel()
        await self._finish(run, status, verdict, error)

    async def _load(self, discussion_id: uuid.UUID) -> Run | None:
        row = await leases.leased_discussion(self._pool, discussion_id, self.worker_id)
        if row is None:
            return None
        run = Run(
            id=row["id"],
            user_id=row["user_id"],
            topic=row["topic"],
            panel=list(row["panel"]),
            max_rounds=row["max_rounds"],
            token_budget=row["token_budget"],
            tokens_used=row["tokens_used"],
            created_at=row["created"],
        )
        messages = await discussions.messages(self._pool, discussion_id)
        if messages:
            await self._announce_missing(run, messages)
        for m in messages:
            run.done_turns.add(m["turn_index"])
            role = _role(m["role"])
            if m["status"] == "completed":
                run.transcript.extend(_turn_messages(role, m["content"]))
            if role is not MODERATOR:
                run.count_agent_turn(dict(m), None)
        run.stop_requested = row["status"] == "stopping"
        return run

    async def _announce_missing(self, run: Run, messages: list[asyncpg.Record]) -> None:
        """After a crash between persisting and announcing a message, announce it now (exactly once)."""
        announced = {
            e["message"]["turn_index"]
            for e in await self._events.read_after(run.id, 0)
            if e["type"] in ("message_completed", "agent_failed")
        }
        for m in messages:
            if m["turn_index"] not in announced:
                await announce_message(self._events, run.id, dict(m))

    async def _run_turns(self, run: Run) -> dict[str, Any] | None:
        turn_index = 0
        for round_no in range(1, run.max_rounds + 1):
            for key in run.panel:
                if run.tokens_used >= run.token_budget:
                    break
                if turn_index not in run.done_turns:
                    await self._check_may_continue(run)
                    await self._turn(run, turn_index, round_no, ROLES[key])
                turn_index += 1
        if not run.agents_completed and run.agent_failures:
            raise _AllAgentsFailed(failure_reason(run.agent_failures))
        # The moderator's turn index is fixed so a resumed run finds it whatever the budget did.
        moderator_index = run.max_rounds * len(run.panel)
        if moderator_index not in run.done_turns:
            await self._check_may_continue(run)
            message = await self._turn(run, moderator_index, run.max_rounds, MODERATOR)
        else:
            message = await discussions.message(self._pool, run.id, moderator_index)
        return _parse_verdict(message["content"]) if message["status"] == "completed" else None

    async def _check_may_continue(self, run: Run) -> None:
        """Before each turn: raise _Stopped, _OutOfTime or _OverQuota if the discussion must end now."""
        if asyncio.get_running_loop().time() >= run.deadline:
            raise _OutOfTime
        # The status backs up the pub/sub stop signal, which a worker misses while loading the run. Any status but
        # running ends the run too: a run that outlived its release must not go on with a finished discussion.
        if run.stop_requested or await discussions.status(self._pool, run.id) != "running":
            raise _Stopped
        if (await quota.day_usage(self._pool, self._settings, run.user_id, quota.local_now())).reached:
            raise _OverQuota

    async def _turn(self, run: Run, turn_index: int, round_no: int, role: Role) -> dict[str, Any]:
        stream = TurnEvents(self._events, run.id, turn_index, role.key)
        started = time.monotonic()

        async def speak() -> Usage:
            nonlocal started
            async with self._slots.slot(stream.queued):
                stream.started()
                started = time.monotonic()
                try:
                    return await self._llm.stream_turn(_prompt(run, role), stream.delta, json_mode=role is MODERATOR)
                finally:
                    await stream.ended()

        usage = Usage()
        status, error = "completed", None
        category: FailureCategory | None = None
        ending: Exception | None = None
        # A stop that came after the last check, while there was no turn to cancel, only set the flag. No await
        # lies between this check and run.speaking being set, so every stop is seen here or cancels the turn.
        if run.stop_requested:
            raise _Stopped
        run.speaking = asyncio.create_task(speak())
        try:
            async with asyncio.timeout_at(run.deadline):
                usage = await run.speaking
        except LlmError as exc:
            status, error, category = "failed", str(exc), exc.category
        except TimeoutError:
            status, error, ending = "failed", "WORKFLOW_TIMEOUT reached", _OutOfTime()
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise  # the whole run is released, not just this turn stopped
            status, error, ending = "stopped", "stopped by user", _Stopped()
        finally:
            run.speaking = None
        AGENT_TURN_DURATION.labels(outcome=status).observe(time.monotonic() - started)
        # Stop and timeout only ever cancel speak(): persisting the (partial) message is never cut short.
        message = await self._store(run, turn_index, round_no, role, status, stream, error, usage)
        if role is not MODERATOR:
            run.count_agent_turn(message, category)
        if ending is not None:
            raise ending
        return message

    async def _store(
        self,
        run: Run,
        turn_index: int,
        round_no: int,
        role: Role,
        status: str,
        stream: TurnEvents,
        error: str | None,
        usage: Usage,
    ) -> dict[str, Any]:
        """Persist the message and its token usage, then announce it: persisted before announced."""
        text = "".join(stream.content)
        said = discussions.TurnMessage(
            turn_index, round_no, role.key, status, text, "".join(stream.reasoning) or None, error
        )
        turn = discussions.StoredTurn(
            run.id,
            run.user_id,
            said,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cache_hit_tokens,
        )
        message = await discussions.store_turn(self._pool, turn)
        if message is None:  # another owner stored this turn already: keep the first, announce nothing
            return await discussions.message(self._pool, run.id, turn_index)
        run.tokens_used += usage.prompt_tokens + usage.completion_tokens
        run.done_turns.add(turn_index)
        if status == "completed":
            run.transcript.extend(_turn_messages(role, text))
        await announce_message(self._events, run.id, message)
        return message

    async def _finish(self, run: Run, status: str, verdict: dict[str, Any] | None, error: str | None) -> None:
        if run.released:
            return  # its cancel was swallowed; the run that resumed the discussion finishes it
        if not await leases.finish(self._pool, run.id, self.worker_id, status, verdict, error):
            return  # the lease moved to another worker, which will finish the discussion
        DISCUSSION_DURATION.labels(status=status).observe(max(time.time() - run.created_at, 0))
        await self._events.append(run.id, FINISHED, status=status, verdict=verdict, error=error)

    # --- leases and stop signals ----------------------------------------------------------------
    async def _renew_lease(self, run: Run) -> None:
        lease = self._settings.discussion_lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            try:
                held = await leases.renew(self._pool, run.id, self.worker_id, lease)
            except DATABASE_ERRORS as exc:
                log.warning("lease renewal for discussion %s failed: %s", run.id, exc)
                continue
            if not held:
                log.warning("lost the lease on discussion %s; another worker resumes it", run.id)
                self._release(run)
                return

    async def _watch_for_stop(self, run: Run) -> None:
        """Read the stop from PostgreSQL every STOP_POLL_SECONDS while the run lives. The pub/sub signal can miss
        the worker that runs the turn (CI: 8 of 200 stops after a handover, each then late by the whole turn,
        AGENT_TIMEOUT); the status that the stop request wrote first cannot."""
        while not run.stop_requested:
            await asyncio.sleep(STOP_POLL_SECONDS)
            try:
                status = await discussions.status(self._pool, run.id)
            except DATABASE_ERRORS:
                continue  # the lease renewal logs a database outage; twice a second here would flood the log
            if status != "running" and not run.stop_requested:  # as in _check_may_continue: any other status
                log.info("discussion %s is %s before its stop signal reached this run: stopping it", run.id, status)
                self._stop(run)

    async def _reap_forever(self) -> None:
        """Claim discussions whose owner stopped renewing (crashed worker) and resume them here."""
        lease = self._settings.discussion_lease_seconds
        while True:
            await asyncio.sleep(lease / 2)
            try:
                claimed = await leases.claim_expired(self._pool, self.worker_id, lease)
            except DATABASE_ERRORS as exc:
                log.warning("reaper query failed: %s", exc)
                continue
            for discussion_id in claimed:
                if discussion_id in self._runs or discussion_id in self._starting:
                    continue  # our own run outlived a renewal outage; the claim just renewed its lease
                log.info("resuming discussion %s after its owner's lease expired", discussion_id)
                self.launch(discussion_id)

    async def _listen_stops(self) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._stop_channel)
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    run = self._runs.get(uuid.UUID(message["data"].decode()))
                    if run is not None:
                        self._stop(run)
            except RedisError as exc:
                # Stops missed meanwhile are still caught by the status check before each turn.
                log.warning("stop-signal subscription failed, resubscribing: %s", exc)
                await asyncio.sleep(1)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]


def _cancel_until_done(task: asyncio.Task[Any]) -> None:
    """Cancel a task (a speaking turn, a released run), and again every STOP_RECANCEL_SECONDS while it still runs:
    a cancel that lands in a Redis or HTTP call can be lost inside a library (CI saw 12 of 200 stops then wait for
    AGENT_TIMEOUT), and one more reaches the task at its next await."""
    if not task.done():
        task.cancel()
        asyncio.get_running_loop().call_later(STOP_RECANCEL_SECONDS, _cancel_until_done, task)


def _prompt(run: Run, role: Role) -> list[dict[str, str]]:
    # Append-only: each prompt is the previous one plus that turn's answer plus this cue, so the whole
    # previous prompt is the upstream cache's prefix. Roles alternate (cue, answer, cue...), which models
    # that reject successive same-role messages (deepseek-reasoner) require.
    return [
        {"role": "system", "content": system_prompt(run.topic, run.panel)},
        *run.transcript,
        {"role": "user", "content": speaker_cue(role)},
    ]


def _role(key: str) -> Role:
    return MODERATOR if key == MODERATOR.key else ROLES[key]


def _turn_messages(role: Role, text: str) -> list[dict[str, str]]:
    """A completed turn in the transcript: the cue that handed it to `role`, then the answer."""
    return [{"role": "user", "content": speaker_cue(role)}, {"role": "assistant", "content": text}]


def failure_reason(failures: list[TurnFailure]) -> str:
    """Why a discussion whose every agent turn failed failed: the most telling of its turns' errors."""
    rank = {category: i for i, category in enumerate(TELLING_FAILURES)}
    telling = min(failures, key=lambda f: rank.get(f.category, len(rank)) if f.category else len(rank))
    return f"every agent turn failed ({len(failures)} turns): {telling.error}"


def _parse_verdict(text: str) -> dict[str, Any] | None:
    """The moderator's JSON verdict, or None when it is not the promised object."""
    try:
        verdict = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(verdict, dict) or not {"stance", "confidence", "summary"} <= verdict.keys():
        return None
    return verdict
