"""/api/auth: register, login, refresh, logout.

Login and refresh return the token pair as JSON and also set the refresh token as an HttpOnly, Secure,
SameSite=Strict cookie scoped to /api/auth, so a browser page never has to hold it where script can read it.
/refresh and /logout take the token from the JSON body when there is one, else from that cookie.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Cookie, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from service import auth
from service.api.deps import Res, too_many_requests

router = APIRouter(prefix="/api/auth", tags=["auth"])
REFRESH_COOKIE = "refresh_token"
COOKIE_PATH = "/api/auth"
RefreshCookie = Annotated[str | None, Cookie(alias=REFRESH_COOKIE, max_length=200)]


class Credentials(BaseModel):
    email: str = Field(pattern=auth.EMAIL_PATTERN, max_length=auth.EMAIL_MAX)
    password: str = Field(min_length=auth.PASSWORD_MIN, max_length=auth.PASSWORD_MAX)


class Registration(Credentials):
    invitation: str | None = Field(default=None, max_length=200)  # REGISTRATION_MODE=invite


class RefreshBody(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=200)


class UserOut(BaseModel):
    id: uuid.UUID
    email: str


class TokensOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret


def _keep_refresh_cookie(response: Response, pair: auth.TokenPair, res: Res) -> TokensOut:
    response.set_cookie(
        REFRESH_COOKIE,
        pair.refresh_token,
        max_age=res.settings.refresh_token_ttl,
        path=COOKIE_PATH,
        secure=True,
        httponly=True,
        samesite="strict",
    )
    return TokensOut(access_token=pair.access_token, refresh_token=pair.refresh_token)


def _given(body: RefreshBody | None, cookie: str | None) -> str | None:
    """The refresh token a request carries: the JSON body's, else the cookie's."""
    return body.refresh_token if body is not None else cookie


def _presented(body: RefreshBody | None, cookie: str | None) -> str:
    token = _given(body, cookie)
    if not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "no refresh token in the body or cookie; log in again")
    return token


@router.post("/register", status_code=status.HTTP_201_CREATED)
async def register(body: Registration, res: Res) -> UserOut:
    try:
        user_id = await auth.register(res.pool, res.settings, body.email, body.password, body.invitation)
    except auth.RegistrationRefusedError as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    except auth.EmailTakenError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return UserOut(id=user_id, email=body.email.lower())


@router.post("/login")
async def login(body: Credentials, request: Request, response: Response, res: Res) -> TokensOut:
    ip = request.client.host if request.client else "unknown"
    try:
        pair = await auth.login(res.pool, res.redis, res.settings, body.email, body.password, ip)
    except auth.RateLimitedError as exc:
        raise too_many_requests(exc) from None
    except auth.AuthError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
    return _keep_refresh_cookie(response, pair, res)


@router.post("/refresh")
async def refresh(
    response: Response, res: Res, cookie: RefreshCookie = None, body: RefreshBody | None = None
) -> TokensOut:
    try:
        pair = await auth.refresh(res.pool, res.settings, _presented(body, cookie))
    except auth.AuthError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
    return _keep_refresh_cookie(response, pair, res)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(res: Res, cookie: RefreshCookie = None, body: RefreshBody | None = None) -> Response:
    if token := _given(body, cookie):
        await auth.logout(res.pool, token)
    done = Response(status_code=status.HTTP_204_NO_CONTENT)
    done.delete_cookie(REFRESH_COOKIE, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict")
    return done
