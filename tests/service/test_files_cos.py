"""Files on the Tencent COS backend: the real cos-python-sdk-v5, over HTTP, against a fake COS."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.service.api import new_user
from tests.service.stack import (
    PYTHON,
    REPO,
    FakeLlm,
    Service,
    free_port,
    running_service,
    service_env,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.integration

SECRET_ID, SECRET_KEY, BUCKET = "AKIDtest", "secret-test", "artifacts-1250000000"


@pytest.fixture(scope="module")
def fake_cos() -> Iterator[str]:
    port = free_port()
    command = [PYTHON, "-m", "tests.cosfake", "--port", str(port), "--secret-id", SECRET_ID, "--secret-key", SECRET_KEY,
               "--bucket", BUCKET]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/_fake/objects").status_code == 200, 15, "the fake COS")
        yield url
    finally:
        stop_process(proc)


@contextmanager
def running_cos_service(
    database_url: str, redis_prefix: str, fake_llm: FakeLlm, domain: str, tmp: Path, **overrides: str
) -> Iterator[Service]:
    """gunicorn storing artifacts in the COS at `domain` (ADDRESS:PORT), with the fake's key unless overridden."""
    cos = {
        "ARTIFACT_STORAGE_BACKEND": "cos",
        "COS_REGION": "ap-guangzhou",
        "COS_BUCKET": BUCKET,
        "COS_SECRET_ID": SECRET_ID,
        "COS_SECRET_KEY": SECRET_KEY,
        "COS_SCHEME": "http",
        "COS_DOMAIN": domain,
    }
    env = service_env(database_url, f"{redis_prefix}cos:", fake_llm, tmp, **{**cos, **overrides})
    with running_service(env, tmp / "log") as svc:
        yield svc


@pytest.fixture(scope="module")
def cos_service(
    database_url: str, redis_prefix: str, fake_llm: FakeLlm, fake_cos: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    domain, tmp = fake_cos.removeprefix("http://"), tmp_path_factory.mktemp("cos")
    with running_cos_service(database_url, redis_prefix, fake_llm, domain, tmp) as svc:
        yield svc


def test_upload_download_delete_through_cos(cos_service: Service, fake_cos: str) -> None:
    payload = b"quarterly numbers\n" * 50_000  # ~900 KB: several read chunks each way
    with httpx.Client(base_url=cos_service.url, timeout=30) as client:
        alice, bob = new_user(client), new_user(client)
        upload = client.post("/api/files", files={"file": ("q3.csv", payload, "text/csv")}, headers=alice.headers)
        assert upload.status_code == 201, upload.text
        file_id = upload.json()["id"]
        ((key, size),) = httpx.get(f"{fake_cos}/_fake/objects").json().items()
        assert key.endswith(f"/{file_id}") and size == len(payload)  # key: <user_id>/<file_id>

        download = client.get(f"/api/files/{file_id}", headers=alice.headers)
        assert download.status_code == 200 and download.content == payload
        assert download.headers["content-type"].startswith("text/csv")
        assert client.get(f"/api/files/{file_id}", headers=bob.headers).status_code == 404

        assert client.delete(f"/api/files/{file_id}", headers=alice.headers).status_code == 204
        assert httpx.get(f"{fake_cos}/_fake/objects").json() == {}


def _log_lines(service: Service) -> list[dict[str, object]]:
    return [json.loads(line) for line in service.log_path.read_text().splitlines() if line.startswith("{")]


def test_a_wrong_cos_key_is_the_operators_error_not_a_500(
    cos_service: Service,
    fake_cos: str,
    database_url: str,
    redis_prefix: str,
    fake_llm: FakeLlm,
    tmp_path: Path,
) -> None:
    domain = fake_cos.removeprefix("http://")
    with (
        httpx.Client(base_url=cos_service.url, timeout=30) as good,
        running_cos_service(
            database_url, redis_prefix, fake_llm, domain, tmp_path, COS_SECRET_KEY="wrong-key-1"
        ) as svc,
        httpx.Client(base_url=svc.url, timeout=30) as wrong,
    ):
        alice = new_user(good)  # both services share the database and the JWT secret
        kept = good.post("/api/files", files={"file": ("a.txt", b"kept\n", "text/plain")}, headers=alice.headers)
        assert kept.status_code == 201, kept.text

        upload = wrong.post("/api/files", files={"file": ("b.txt", b"lost\n", "text/plain")}, headers=alice.headers)
        assert upload.status_code == 502, upload.text
        assert upload.json() == {
            "detail": "file storage refused the appliance's credentials (COS 403 SignatureDoesNotMatch): "
            "the operator must fix COS_SECRET_ID/COS_SECRET_KEY"
        }
        # Nothing half-written: no row, no object, no spooled copy left behind.
        assert [f["filename"] for f in wrong.get("/api/files", headers=alice.headers).json()] == ["a.txt"]
        objects = httpx.get(f"{fake_cos}/_fake/objects").json()
        assert [key.split("/")[1] for key in objects] == [kept.json()["id"]]
        assert list((tmp_path / "artifacts" / ".spool").iterdir()) == []

        file_url = f"/api/files/{kept.json()['id']}"
        assert wrong.get(file_url, headers=alice.headers).status_code == 502
        refused_delete = wrong.delete(file_url, headers=alice.headers)
        assert refused_delete.status_code == 502 and "COS_SECRET_KEY" in refused_delete.json()["detail"]
        assert good.get(file_url, headers=alice.headers).content == b"kept\n"  # a refused delete keeps the file
        assert good.delete(file_url, headers=alice.headers).status_code == 204

    warnings = [line for line in _log_lines(svc) if line["level"] == "warning" and "cos_code" in line]
    assert {(line["operation"], line["cos_code"]) for line in warnings} == {
        ("store the upload", "SignatureDoesNotMatch"),
        ("read the file", "SignatureDoesNotMatch"),
        ("delete the file", "SignatureDoesNotMatch"),
    }
    assert "wrong-key-1" not in svc.log_path.read_text()
    assert '"status": 500' not in svc.log_path.read_text()


def test_an_unreachable_cos_is_a_503_that_says_so(
    database_url: str, redis_prefix: str, fake_llm: FakeLlm, tmp_path: Path
) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    with (
        running_cos_service(database_url, redis_prefix, fake_llm, closed, tmp_path) as svc,
        httpx.Client(base_url=svc.url, timeout=60) as client,
    ):
        alice = new_user(client)
        upload = client.post("/api/files", files={"file": ("c.txt", b"c\n", "text/plain")}, headers=alice.headers)
        assert upload.status_code == 503, upload.text
        assert upload.json() == {"detail": "file storage unreachable (store the upload): try again later"}
        assert client.get("/api/files", headers=alice.headers).json() == []
