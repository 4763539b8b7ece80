"""/api/account: who is logged in, and deleting the account with all its data (PIPL's right to erasure)."""

from __future__ import annotations

import datetime
import uuid

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from service import auth, users
from service.api.deps import Res, UserId, not_found, too_many_requests
from service.api.routes.auth import COOKIE_PATH, REFRESH_COOKIE
from service.storage import StorageError

router = APIRouter(prefix="/api/account", tags=["account"])


class AccountOut(BaseModel):
    id: uuid.UUID
    email: str
    is_admin: bool
    created_at: datetime.datetime


class DeletionIn(BaseModel):
    password: str = Field(min_length=1, max_length=auth.PASSWORD_MAX)  # confirms it is the owner, not a stolen token


@router.get("")
async def account(user_id: UserId, res: Res) -> AccountOut:
    row = await res.pool.fetchrow("SELECT id, email, is_admin, created_at FROM users WHERE id = $1", user_id)
    if row is None:
        raise not_found("account")
    return AccountOut(**row)


@router.delete("", status_code=status.HTTP_204_NO_CONTENT)
async def delete_account(body: DeletionIn, request: Request, user_id: UserId, res: Res) -> Response:
    """Stops its running discussions, then deletes its discussions, event streams, files, usage and logins."""
    ip = request.client.host if request.client else "unknown"
    try:
        await auth.confirm_password(res.pool, res.redis, res.settings, user_id, body.password, ip)
    except auth.RateLimitedError as exc:
        raise too_many_requests(exc) from None
    except auth.AuthError as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from None
    backends = users.Backends(res.settings, res.pool, res.redis, res.events, res.store)
    try:
        await users.delete_account(backends, user_id)
    except users.UserError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except StorageError as exc:  # the account stays disabled; deleting again finishes the job
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    done = Response(status_code=status.HTTP_204_NO_CONTENT)
    done.delete_cookie(REFRESH_COOKIE, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict")
    return done
