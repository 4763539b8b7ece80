"""The refresh token as an HttpOnly cookie for the web console, next to the JSON contract."""

from __future__ import annotations

from http.cookies import SimpleCookie

import httpx
import pytest

from tests.service.api import new_user

pytestmark = pytest.mark.integration


def refresh_cookie(response: httpx.Response) -> tuple[str, dict[str, str]]:
    """The refresh_token cookie a response sets: its value and its attributes (lower-case names)."""
    jar: SimpleCookie = SimpleCookie()
    jar.load(response.headers["set-cookie"])
    morsel = jar["refresh_token"]
    return morsel.value, {k: str(v) for k, v in morsel.items() if v}


def test_login_and_refresh_set_a_strict_cookie_that_refresh_and_logout_accept(client: httpx.Client) -> None:
    user = new_user(client)
    login = client.post("/api/auth/login", json={"email": user.email, "password": user.password})
    token, attributes = refresh_cookie(login)
    assert token == login.json()["refresh_token"]  # the JSON contract still holds
    assert attributes["path"] == "/api/auth"
    assert attributes["samesite"] == "strict"
    assert attributes["httponly"] == attributes["secure"] == "True"
    assert int(attributes["max-age"]) == 2592000

    rotated = client.post("/api/auth/refresh", headers={"Cookie": f"refresh_token={token}"})
    assert rotated.status_code == 200
    newer, _ = refresh_cookie(rotated)
    assert newer == rotated.json()["refresh_token"] != token
    assert client.get("/api/usage", headers={"Authorization": f"Bearer {rotated.json()['access_token']}"}).is_success

    out = client.post("/api/auth/logout", headers={"Cookie": f"refresh_token={newer}"})
    assert out.status_code == 204
    cleared, attributes = refresh_cookie(out)
    assert cleared == ""
    assert attributes["max-age"] == "0"
    assert attributes["path"] == "/api/auth"
    assert client.post("/api/auth/refresh", headers={"Cookie": f"refresh_token={newer}"}).status_code == 401


def test_a_body_token_wins_over_the_cookie_and_neither_is_refused(client: httpx.Client) -> None:
    user = new_user(client)
    other = new_user(client)
    both = client.post(
        "/api/auth/refresh",
        json={"refresh_token": user.refresh_token},
        headers={"Cookie": f"refresh_token={other.refresh_token}"},
    )
    assert both.status_code == 200
    assert client.post("/api/auth/refresh", json={"refresh_token": other.refresh_token}).status_code == 200  # unused
    neither = client.post("/api/auth/refresh")
    assert neither.status_code == 401
    assert "log in again" in neither.json()["detail"]
    assert client.post("/api/auth/logout").status_code == 204  # nothing to revoke: still logged out
