"""One agent turn's events in its discussion's log: `queued` while it waits for a slot, `agent_started`, then its
`reasoning` and `token` deltas batched every TOKEN_BATCH_SECONDS; and the message events once a turn is stored."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from service.streaming import EventLog

TOKEN_BATCH_SECONDS = 0.05
PUBLIC_MESSAGE_FIELDS = ("id", "turn_index", "round", "role", "status", "content", "error")


class TurnEvents:
    """The event side of one turn; it also keeps the text it streamed (`content`, `reasoning`)."""

    def __init__(self, events: EventLog, discussion_id: uuid.UUID, turn_index: int, role: str) -> None:
        self._events = events
        self._discussion_id = discussion_id
        self._base: dict[str, Any] = {"turn_index": turn_index, "role": role}
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self._pending: list[tuple[str, str]] = []  # (event type, text) in arrival order; a type's run joined
        self._last_flush = 0.0  # the first delta goes out at once: time to first token is what users feel
        self._announced: asyncio.Task[int] | None = None  # agent_started, appended while the upstream request starts

    async def queued(self, position: int) -> None:
        await self._events.append(self._discussion_id, "queued", position=position, **self._base)

    def started(self) -> None:
        # Not awaited before the upstream request: the Redis round trip would add to time to first token.
        self._announced = asyncio.create_task(
            self._events.append(self._discussion_id, "agent_started", at=time.time(), **self._base)
        )

    async def delta(self, text: str, thought: str) -> None:
        self.content.append(text)
        self.reasoning.append(thought)
        for kind, piece in (("reasoning", thought), ("token", text)):  # a model reasons before it answers
            if not piece:
                continue  # never an empty event: a reasoning delta has no content and vice versa
            if self._pending and self._pending[-1][0] == kind:
                self._pending[-1] = (kind, self._pending[-1][1] + piece)
            else:
                self._pending.append((kind, piece))
        if time.monotonic() - self._last_flush >= TOKEN_BATCH_SECONDS:
            await self._flush()

    async def ended(self) -> None:
        """After the upstream request, however it ended: agent_started, then what is still pending."""
        assert self._announced is not None, "only a started turn ends"
        await self._announced  # before any later event of this turn; its failure fails the turn
        await self._flush()

    async def _flush(self) -> None:
        if self._pending:
            assert self._announced is not None  # deltas only arrive after started()
            await self._announced  # agent_started keeps the seq before the first token's
            for kind, text in self._pending:
                await self._events.append(self._discussion_id, kind, text=text, **self._base)
            self._pending.clear()
        self._last_flush = time.monotonic()


async def announce_message(events: EventLog, discussion_id: uuid.UUID, message: dict[str, Any]) -> None:
    """A stored turn's event: message_completed (also for a stopped turn's partial message) or agent_failed."""
    kind = "message_completed" if message["status"] != "failed" else "agent_failed"
    await events.append(discussion_id, kind, message={k: message[k] for k in PUBLIC_MESSAGE_FIELDS})
