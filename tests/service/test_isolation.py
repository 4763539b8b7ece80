"""Two users: every route that takes an id answers 404 for the other user's resources."""

from __future__ import annotations

import httpx
import pytest

from tests.service.api import create_discussion, new_user, wait_finished

pytestmark = pytest.mark.integration


def test_other_users_resources_are_404_on_every_route(client: httpx.Client) -> None:
    alice, bob = new_user(client), new_user(client)
    discussion = create_discussion(client, alice, "Alice's [[fake:words=4]]", ["risk"])
    wait_finished(client, alice, discussion)
    upload = client.post(
        "/api/files", files={"file": ("notes.txt", b"alice secret", "text/plain")}, headers=alice.headers
    )
    assert upload.status_code == 201, upload.text
    file_id = upload.json()["id"]

    attempts = [
        ("GET", f"/api/discussions/{discussion}", None),
        ("POST", f"/api/discussions/{discussion}/stop", None),
        ("DELETE", f"/api/discussions/{discussion}", None),
        ("POST", "/api/ws-ticket", {"discussion_id": discussion}),
        ("GET", f"/api/files/{file_id}", None),
        ("DELETE", f"/api/files/{file_id}", None),
    ]
    for method, path, body in attempts:
        response = client.request(method, path, json=body, headers=bob.headers)
        assert response.status_code == 404, (method, path, response.status_code)
        assert "alice" not in response.text.lower()
    assert client.get("/api/discussions", headers=bob.headers).json() == []
    assert client.get("/api/files", headers=bob.headers).json() == []
    assert client.get("/api/usage", headers=bob.headers).json()["turns"] == 0

    # Alice still has everything, and can delete it.
    assert client.get(f"/api/files/{file_id}", headers=alice.headers).content == b"alice secret"
    assert [d["id"] for d in client.get("/api/discussions", headers=alice.headers).json()] == [discussion]
    assert client.get("/api/usage", headers=alice.headers).json()["turns"] == 2
    assert client.delete(f"/api/discussions/{discussion}", headers=alice.headers).status_code == 204
    assert client.delete(f"/api/files/{file_id}", headers=alice.headers).status_code == 204
    assert client.get(f"/api/files/{file_id}", headers=alice.headers).status_code == 404


def test_upload_limits(client: httpx.Client) -> None:
    user = new_user(client)
    wrong_type = client.post(
        "/api/files", files={"file": ("x.exe", b"MZ", "application/x-msdownload")}, headers=user.headers
    )
    assert wrong_type.status_code == 415 and "not accepted" in wrong_type.json()["detail"]
    too_big = client.post(
        "/api/files",
        files={"file": ("big.txt", b"a" * (10 * 1024 * 1024 + 1), "text/plain")},
        headers=user.headers,
    )
    assert too_big.status_code == 413 and "MAX_UPLOAD_BYTES" in too_big.json()["detail"]
    assert client.get("/api/files", headers=user.headers).json() == []


def test_discussions_are_paginated_and_running_ones_cannot_be_deleted(client: httpx.Client) -> None:
    user = new_user(client)
    ids = [create_discussion(client, user, f"Page {i} [[fake:words=20,delay=0.05]]", ["risk"]) for i in range(3)]
    busy = client.delete(f"/api/discussions/{ids[-1]}", headers=user.headers)
    assert busy.status_code == 409 and "stop" in busy.json()["detail"]
    for discussion in ids:
        wait_finished(client, user, discussion)
    page1 = client.get("/api/discussions?limit=2", headers=user.headers).json()
    page2 = client.get("/api/discussions?limit=2&offset=2", headers=user.headers).json()
    assert len(page1) == 2 and len(page2) == 1
    assert {d["id"] for d in page1 + page2} == set(ids)


def test_nul_characters_are_refused_not_a_server_error(client: httpx.Client) -> None:
    # PostgreSQL text cannot hold NUL; it must be a 422 (or cleaned), never a 500.
    register = client.post("/api/auth/register", json={"email": "a\x00b@example.test", "password": "long-enough"})
    assert register.status_code == 422
    user = new_user(client)
    topic = client.post("/api/discussions", json={"topic": "nul\x00topic", "panel": ["risk"]}, headers=user.headers)
    assert topic.status_code == 422
    # Built by hand: httpx would percent-encode the NUL in the filename.
    body = (
        b'--cut\r\nContent-Disposition: form-data; name="file"; filename="a\x00b.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nx\r\n--cut--\r\n"
    )
    headers = {**user.headers, "Content-Type": "multipart/form-data; boundary=cut"}
    upload = client.post("/api/files", content=body, headers=headers)
    assert upload.status_code == 201 and upload.json()["filename"] == "ab.txt"
