"""CORS through the real gunicorn: answered for an allowed origin, withheld from others, skipped (with
`Vary: Origin`) when a request carries no Origin at all."""

from __future__ import annotations

import httpx
import pytest

from tests.service.stack import ORIGIN

pytestmark = pytest.mark.integration


def test_an_allowed_origin_gets_cors_headers_and_its_preflight_passes(client: httpx.Client) -> None:
    simple = client.get("/api/roles", headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert simple.headers["access-control-allow-credentials"] == "true"
    assert "X-Request-ID" in simple.headers["access-control-expose-headers"]
    preflight = client.options(
        "/api/discussions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN


def test_another_origin_gets_no_cors_headers_and_its_preflight_fails(client: httpx.Client) -> None:
    simple = client.get("/api/roles", headers={"Origin": "http://evil.test"})
    assert "access-control-allow-origin" not in simple.headers
    preflight = client.options(
        "/api/discussions", headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers


def test_a_request_without_origin_skips_cors_but_says_the_answer_varies_by_origin(client: httpx.Client) -> None:
    for path in ("/api/roles", "/api/health", "/api/discussions"):
        answer = client.get(path)
        assert "access-control-allow-origin" not in answer.headers
        assert answer.headers.get_list("vary") == ["Origin"], path
