"""nginx at the edge of the deployed sandbox: redirects, headers, HTTP/2, limits, the static root."""

from __future__ import annotations

import re
import socket
import ssl
import time

import httpx
import pytest

from appliance.remote import RemoteHost
from tests.conftest import Deployed
from tests.e2e.traffic import Site

pytestmark = pytest.mark.e2e
WWW = "/opt/appliance/shared/www"


def test_plain_http_redirects_to_https_except_acme_challenges(deployed: Deployed) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{deployed.sandbox.http_port}", timeout=10) as client:
        moved = client.get("/api/health?x=1")
        challenge = client.get("/.well-known/acme-challenge/no-such-token")
    assert moved.status_code == 301
    assert moved.headers["location"] == "https://127.0.0.1/api/health?x=1"
    assert challenge.status_code == 404  # served from the web root, not redirected


def test_security_headers_and_request_id(site: Site) -> None:
    with site.client() as client:
        given = client.get("/api/health", headers={"X-Request-ID": "ticket-4711"})
        made = client.get("/api/health")
    assert given.status_code == 200
    assert given.headers["strict-transport-security"] == "max-age=63072000"
    assert given.headers["x-content-type-options"] == "nosniff"
    assert given.headers["x-frame-options"] == "DENY"
    assert given.headers["x-request-id"] == "ticket-4711"
    assert len(made.headers["x-request-id"]) == 32  # nginx's own $request_id when none was sent
    policy = dict(part.strip().split(" ", 1) for part in given.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'"  # no inline script, no eval
    assert policy["frame-ancestors"] == "'none'"
    assert "camera=()" in given.headers["permissions-policy"]


def test_nginx_does_not_announce_its_version(site: Site) -> None:
    with site.client() as client:
        page, missing = client.get("/"), client.get("/assets/no-such-file.js")
    assert page.headers["server"] == "nginx"
    assert missing.status_code == 404 and not re.search(r"nginx/\d", missing.text)


def negotiated(site: Site, context: ssl.SSLContext) -> tuple[str | None, str | None]:
    """The TLS version and ALPN protocol a handshake with the site settles on."""
    with (
        socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version(), tls.selected_alpn_protocol()


def test_http2_over_tls13_and_tls12_still_accepted(site: Site) -> None:
    modern = site.tls()
    modern.set_alpn_protocols(["h2", "http/1.1"])
    assert negotiated(site, modern) == ("TLSv1.3", "h2")
    legacy = site.tls()
    legacy.minimum_version = legacy.maximum_version = ssl.TLSVersion.TLSv1_2
    assert negotiated(site, legacy) == ("TLSv1.2", None)


def test_body_limits_are_per_location(site: Site) -> None:
    user = site.new_user()
    with site.client() as client:
        huge_upload = client.post("/api/files", content=b"x" * (21 * 1024 * 1024), headers=user)
        anonymous_upload = client.post("/api/files", content=b"x" * (5 * 1024 * 1024))
        big_json = client.post("/api/discussions", content=b"{" + b" " * (200 * 1024) + b"}", headers=user)
        big_login = client.post("/api/auth/login", content=b"x" * (100 * 1024))
    assert huge_upload.status_code == 413  # past nginx.body_limit_mb
    # Refused before its body is read: no credentials at all.
    assert anonymous_upload.status_code == 401 and "Authorization" in anonymous_upload.json()["detail"]
    assert big_json.status_code == 413 and big_login.status_code == 413  # JSON routes take 64 KB


def test_static_root_serves_the_releases_front_end_with_year_long_assets_and_the_spa_fallback(
    site: Site, host: RemoteHost
) -> None:
    page = host.run(f"cat {WWW}/index.html").stdout
    referenced = re.search(r"/assets/[^\"' >]+", page)
    assert referenced, page
    with site.client() as client:
        asset = client.get(referenced.group(0), headers={"Accept-Encoding": "gzip"})
        deep_link = client.get("/discussions/42")
        missing = client.get("/assets/app.0000000.js")
    assert asset.status_code == 200
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert asset.headers["strict-transport-security"]  # a cache header does not drop the security ones
    assert asset.headers["content-encoding"] == "gzip"  # static assets only: no secrets in them
    assert deep_link.status_code == 200 and deep_link.text == page
    assert deep_link.headers["cache-control"] == "no-cache"
    assert "content-encoding" not in deep_link.headers  # no compression of HTML: BREACH
    assert missing.status_code == 404  # a missing hashed asset is not the SPA's page


def test_login_attempts_from_one_address_meet_nginx_rate_limit_then_recover(site: Site) -> None:
    attempt = {"email": "nobody@example.test", "password": "wrong-password-1"}
    site.use_up_login_allowance()
    with site.client() as client:
        # nginx lets one attempt through every 3 s again (the API keeps its own per-account limit).
        deadline = time.monotonic() + 30
        while "nginx" in (answer := client.post("/api/auth/login", json=attempt)).text:
            assert time.monotonic() < deadline, "nginx's login limit did not lift within 30 s"
            time.sleep(2)
        assert answer.status_code in (401, 429), answer.text
