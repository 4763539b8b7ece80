"""Files on the Tencent COS backend: the real cos-python-sdk-v5, over HTTP, against a fake COS."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.service.conftest import (
    PYTHON,
    REPO,
    FakeLlm,
    Service,
    free_port,
    new_user,
    service_env,
    start_service,
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


@pytest.fixture(scope="module")
def cos_service(
    database_url: str, redis_prefix: str, fake_llm: FakeLlm, fake_cos: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("cos")
    env = service_env(
        database_url, f"{redis_prefix}cos:", fake_llm, tmp,
        ARTIFACT_STORAGE_BACKEND="cos", COS_REGION="ap-guangzhou", COS_BUCKET=BUCKET,
        COS_SECRET_ID=SECRET_ID, COS_SECRET_KEY=SECRET_KEY, COS_SCHEME="http",
        COS_DOMAIN=fake_cos.removeprefix("http://"),
    )  # fmt: skip
    svc = start_service(env, tmp / "log")
    try:
        yield svc
    finally:
        stop_process(svc.proc, timeout=40)


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
