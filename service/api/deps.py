"""Request dependencies: the app's shared resources and the authenticated user."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis

from service import auth, quota, security
from service.agents.orchestration import Orchestrator
from service.settings import Settings
from service.storage import ArtifactStore
from service.streaming import EventHub, EventLog


@dataclass
class Resources:
    """Everything a worker opens once at start-up (see main.lifespan)."""

    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    events: EventLog
    hub: EventHub
    orchestrator: Orchestrator
    store: ArtifactStore


def get_resources(request: Request) -> Resources:
    return request.app.state.resources  # type: ignore[no-any-return]


_bearer = HTTPBearer(auto_error=False)


def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> uuid.UUID:
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token; log in at /api/auth/login")
    try:
        return security.decode_access_token(credentials.credentials, get_resources(request).settings.jwt_secret)
    except security.InvalidTokenError:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "access token invalid or expired; refresh it at /api/auth/refresh"
        ) from None


Res = Annotated[Resources, Depends(get_resources)]
UserId = Annotated[uuid.UUID, Depends(current_user)]


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")


def too_many_requests(refusal: auth.RateLimitedError | quota.QuotaExceededError) -> HTTPException:
    """429 with the refusal's reason, and its Retry-After: the seconds until logins or the token quota allow again."""
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS, str(refusal), headers={"Retry-After": str(refusal.retry_after)}
    )
