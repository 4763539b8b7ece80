"""/api/discussions: create, list, get, stop, delete; /api/usage; /api/ws-ticket."""

from __future__ import annotations

import datetime
import json
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, Field, field_validator

from service import discussions, quota, tickets
from service.agents.presets import DEFAULT_PANEL, ROLES
from service.api.deps import Res, UserId, not_found, too_many_requests

router = APIRouter(prefix="/api", tags=["discussions"])
# Far beyond any real list, far below PostgreSQL's bigint: a larger offset is a 422, not a database error.
MAX_OFFSET = 1_000_000


class DiscussionIn(BaseModel):
    topic: str = Field(min_length=3, max_length=2000, pattern=r"^[^\x00]*$")  # PostgreSQL text has no NUL
    panel: list[str] = Field(default=list(DEFAULT_PANEL), min_length=1, max_length=len(ROLES))
    max_rounds: int = Field(default=2, ge=1, le=10)
    token_budget: int = Field(default=50_000, ge=100, le=2_000_000)

    @field_validator("panel")
    @classmethod
    def known_roles(cls, panel: list[str]) -> list[str]:
        unknown = [k for k in panel if k not in ROLES]
        if unknown or len(set(panel)) != len(panel):
            raise ValueError(f"panel must list distinct roles from {sorted(ROLES)}; got {panel}")
        return panel


@dataclass(frozen=True)
class MessageOut(discussions.TurnMessage):
    id: uuid.UUID
    created_at: datetime.datetime


class DiscussionOut(BaseModel):
    id: uuid.UUID
    topic: str
    panel: list[str]
    max_rounds: int
    token_budget: int
    status: str
    verdict: dict[str, Any] | None
    error: str | None  # why a `failed` discussion failed, in words; null otherwise
    tokens_used: int
    created_at: datetime.datetime
    finished_at: datetime.datetime | None


class DiscussionDetail(DiscussionOut):
    messages: list[MessageOut]


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    cache_hit_tokens: int
    turns: int
    tokens_today: int
    daily_token_quota: int | None  # None: an admin, limited by the service's daily ceiling only
    tokens_left_today: int  # the largest token_budget a new discussion may have now
    resets_at: datetime.datetime


class TicketIn(BaseModel):
    discussion_id: uuid.UUID


class TicketOut(BaseModel):
    ticket: str
    expires_in: int


class RoleOut(BaseModel):
    key: str
    name: str
    instructions: str


# Static data: encoded once, so the route skips per-request validation and JSON encoding.
ROLES_JSON = json.dumps(
    [RoleOut(key=r.key, name=r.name, instructions=r.instructions).model_dump() for r in ROLES.values()]
).encode()


@router.get("/roles", response_model=list[RoleOut])
async def list_roles() -> Response:
    return Response(ROLES_JSON, media_type="application/json")


@router.post("/discussions", status_code=status.HTTP_201_CREATED)
async def create_discussion(body: DiscussionIn, user_id: UserId, res: Res) -> DiscussionOut:
    try:
        row = await discussions.create(
            res.pool,
            res.settings,
            user_id,
            body.topic,
            body.panel,
            body.max_rounds,
            body.token_budget,
            res.orchestrator.worker_id,
        )
    except quota.QuotaExceededError as exc:
        raise too_many_requests(exc) from None
    except quota.AccountDisabledError as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    # Runs here, in the worker that received the request, under a lease any worker can take over.
    res.orchestrator.launch(row["id"])
    return DiscussionOut(**row)


@router.get("/discussions")
async def list_discussions(
    user_id: UserId, res: Res, limit: int = Query(20, ge=1, le=100), offset: int = Query(0, ge=0, le=MAX_OFFSET)
) -> list[DiscussionOut]:
    return [DiscussionOut(**r) for r in await discussions.list_for_user(res.pool, user_id, limit, offset)]


@router.get("/discussions/{discussion_id}")
async def get_discussion(discussion_id: uuid.UUID, user_id: UserId, res: Res) -> DiscussionDetail:
    found = await discussions.get_for_user(res.pool, user_id, discussion_id)
    if found is None:
        raise not_found("discussion")
    return DiscussionDetail(**found)


@router.post("/discussions/{discussion_id}/stop", status_code=status.HTTP_202_ACCEPTED)
async def stop_discussion(discussion_id: uuid.UUID, user_id: UserId, res: Res) -> dict[str, str]:
    state = await discussions.mark_stopping(res.pool, user_id, discussion_id)
    if state is None:
        raise not_found("discussion")
    if state == "stopping":
        await res.orchestrator.request_stop(discussion_id)
    return {"status": state}


@router.delete("/discussions/{discussion_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_discussion(discussion_id: uuid.UUID, user_id: UserId, res: Res) -> Response:
    try:
        deleted = await discussions.delete(res.pool, user_id, discussion_id)
    except discussions.DiscussionBusyError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    if not deleted:
        raise not_found("discussion")
    await res.events.delete(discussion_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/usage")
async def usage(user_id: UserId, res: Res) -> UsageOut:
    """All-time totals, and what is left of today's limits."""
    try:
        today = await quota.day_usage(res.pool, res.settings, user_id, quota.local_now())
    except quota.AccountDisabledError as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    return UsageOut(
        **await discussions.usage_for_user(res.pool, user_id),
        tokens_today=today.user_tokens,
        daily_token_quota=today.user_quota,
        tokens_left_today=today.left,
        resets_at=today.resets_at,
    )


@router.post("/ws-ticket")
async def ws_ticket(body: TicketIn, user_id: UserId, res: Res) -> TicketOut:
    """A single-use ticket for /ws/discussions/{id}: browsers cannot send headers on a WebSocket."""
    if not await discussions.owns(res.pool, user_id, body.discussion_id):
        raise not_found("discussion")
    ticket = await tickets.issue(res.redis, res.settings.redis_key_prefix, user_id, body.discussion_id)
    return TicketOut(ticket=ticket, expires_in=tickets.TTL_SECONDS)
