"""/api/auth: register, login, refresh, logout."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from service import auth
from service.api.deps import Res

router = APIRouter(prefix="/api/auth", tags=["auth"])


class Credentials(BaseModel):
    email: str = Field(pattern=r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$", max_length=254)
    password: str = Field(min_length=8, max_length=256)


class RefreshBody(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=200)


class UserOut(BaseModel):
    id: uuid.UUID
    email: str


class TokensOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret


@router.post("/register", status_code=status.HTTP_201_CREATED)
async def register(body: Credentials, res: Res) -> UserOut:
    try:
        user_id = await auth.register(res.pool, body.email, body.password)
    except auth.EmailTakenError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return UserOut(id=user_id, email=body.email.lower())


@router.post("/login")
async def login(body: Credentials, request: Request, res: Res) -> TokensOut:
    ip = request.client.host if request.client else "unknown"
    try:
        pair = await auth.login(res.pool, res.redis, res.settings, body.email, body.password, ip)
    except auth.RateLimitedError as exc:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, str(exc), headers={"Retry-After": str(exc.retry_after)}
        ) from None
    except auth.AuthError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
    return TokensOut(access_token=pair.access_token, refresh_token=pair.refresh_token)


@router.post("/refresh")
async def refresh(body: RefreshBody, res: Res) -> TokensOut:
    try:
        pair = await auth.refresh(res.pool, res.settings, body.refresh_token)
    except auth.AuthError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
    return TokensOut(access_token=pair.access_token, refresh_token=pair.refresh_token)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(body: RefreshBody, res: Res) -> Response:
    await auth.logout(res.pool, body.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
