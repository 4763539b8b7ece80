"""Uploads with service.artifact_storage = "cos": through nginx into the (local) COS bucket and back, and what
a wrong COS key gives the user. On the shared `day_one` sandbox, whose API stores artifacts in a FakeCos on the
Docker bridge gateway: the request leaves the API container over the egress network and the nested engine."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from appliance.backup.cos import CosStore, CosTarget
from appliance.releases import Release, current_release
from appliance.remote import open_host
from appliance.shell import sh
from tests.conftest import inv
from tests.e2e.conftest import ARTIFACT_BUCKET, ARTIFACT_SECRET_ID, ARTIFACT_SECRET_KEY, DayOne
from tests.e2e.traffic import Site

pytestmark = pytest.mark.e2e

ARTIFACTS = "/var/lib/cvm-service/artifacts"  # the API container's mount of the artifacts volume


@pytest.fixture(scope="module")
def site(day_one: DayOne) -> Site:
    """The day-one site by its domain, trusting the CA that issued its provided certificate."""
    return Site(day_one.sandbox.https_port, day_one.chain.root, day_one.domain)


@pytest.fixture(scope="module")
def bucket(day_one: DayOne) -> CosStore:
    """The artifact bucket read with the project's own COS client (the backups'), by the bucket's name."""
    endpoint = f"http://{day_one.fake.address}:{day_one.fake.port}"
    return CosStore(CosTarget(ARTIFACT_BUCKET, "ap-shanghai", ARTIFACT_SECRET_ID, ARTIFACT_SECRET_KEY, endpoint))


@pytest.fixture(scope="module")
def serving(day_one: DayOne) -> Iterator[Release]:
    """The release serving when this module starts; it serves again when the module ends."""
    with open_host(day_one.config) as host:
        release = current_release(host, day_one.config.settings)
    assert release is not None
    yield release
    with open_host(day_one.config) as host:
        still = current_release(host, day_one.config.settings)
    if still is None or still.version != release.version:
        back = inv("rollback", "--to", release.version, "--config", str(day_one.sandbox.config_file))
        assert back.returncode == 0, back.stdout + back.stderr


def test_an_upload_goes_to_the_bucket_and_downloads_with_the_same_bytes(
    day_one: DayOne, site: Site, bucket: CosStore, serving: Release
) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)  # a dozen of the API's read chunks each way
    user = site.new_user()
    with site.client() as client:
        upload = client.post("/api/files", files={"file": ("scan.png", payload, "image/png")}, headers=user, timeout=60)
        assert upload.status_code == 201, upload.text
        file_id = upload.json()["id"]
        (stored,) = [item for item in bucket.objects("") if item.key.endswith(f"/{file_id}")]
        assert stored.size == len(payload)
        assert bucket.get_bytes(stored.key) == payload

        download = client.get(f"/api/files/{file_id}", headers=user, timeout=60)
        assert download.status_code == 200, download.text
        assert download.content == payload
        assert download.headers["content-type"] == "image/png"

        with open_host(day_one.config) as host:
            on_volume = host.run(serving.compose("exec", "-T", "api", "find", ARTIFACTS, "-type", "f", api=True))
        assert on_volume.exit_code == 0, on_volume.stderr
        assert on_volume.stdout.split() == []  # the bytes are in COS only; nothing stayed spooled

        assert client.delete(f"/api/files/{file_id}", headers=user).status_code == 204
    assert [item.key for item in bucket.objects("") if item.key.endswith(f"/{file_id}")] == []


def test_a_wrong_cos_key_is_a_clear_error_on_upload(
    day_one: DayOne, site: Site, bucket: CosStore, serving: Release
) -> None:
    # The operator deploys the serving image again with a wrong key (the environment overrides secrets.env). By
    # image ID: another run on this machine may have built an image under the same tag since.
    with open_host(day_one.config) as host:
        image = json.loads(host.run(sh("cat", f"{serving.directory}/manifest.json")).stdout)["images"]["api"]
    config_file = str(day_one.sandbox.config_file)
    wrong = inv(
        "deploy", "--version", f"{serving.version}-wrong-cos-key", "--image", image, "--config", config_file,
        env={"COS_SECRET_KEY": "not-the-artifact-key"},
    )  # fmt: skip
    assert wrong.returncode == 0, wrong.stdout + wrong.stderr
    before = [item.key for item in bucket.objects("")]
    user = site.new_user()
    with site.client() as client:
        upload = client.post("/api/files", files={"file": ("notes.txt", b"lost?\n", "text/plain")}, headers=user)
        listed = client.get("/api/files", headers=user)
    assert upload.status_code == 502, upload.text
    assert upload.json() == {
        "detail": "file storage refused the appliance's credentials (COS 403 SignatureDoesNotMatch): "
        "the operator must fix COS_SECRET_ID/COS_SECRET_KEY"
    }
    assert listed.json() == []
    assert [item.key for item in bucket.objects("")] == before
    with open_host(day_one.config) as host:
        wrong_release = current_release(host, day_one.config.settings)
        assert wrong_release is not None and wrong_release.version.endswith("-wrong-cos-key")
        log = host.run(wrong_release.compose("logs", "--no-color", "api", api=True)).stdout
    assert '"cos_code": "SignatureDoesNotMatch"' in log and "not-the-artifact-key" not in log

    # The right key again: the release that served before takes traffic back and uploads work.
    back = inv("rollback", "--to", serving.version, "--config", config_file)
    assert back.returncode == 0, back.stdout + back.stderr
    with site.client() as client:
        again = client.post("/api/files", files={"file": ("notes.txt", b"kept\n", "text/plain")}, headers=user)
        assert again.status_code == 201, again.text
        assert client.delete(f"/api/files/{again.json()['id']}", headers=user).status_code == 204
