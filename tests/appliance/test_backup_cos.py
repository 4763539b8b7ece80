"""The COS edge against the local COS (moto behind the COS shim), through the real cos-python-sdk-v5."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from appliance.backup.cos import MB, CosStore, CosTarget
from appliance.backup.errors import BackupError
from tests.conftest import free_port
from tests.cosfake import FakeCos, crc64

pytestmark = pytest.mark.integration

SECRET_ID = "AKIDfakefakefake"
SECRET_KEY = "fake-secret-key"
BUCKET = "backups-1250000000"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeCos]:
    server = FakeCos("127.0.0.1", free_port(), SECRET_ID, SECRET_KEY)
    server.create_bucket(BUCKET)
    server.start()
    yield server
    server.stop()


def target(fake: FakeCos, **changes: object) -> CosTarget:
    values: dict[str, object] = {
        "bucket": BUCKET,
        "region": "ap-shanghai",
        "secret_id": SECRET_ID,
        "secret_key": SECRET_KEY,
        "endpoint": f"http://127.0.0.1:{fake.port}",
        "part_size": 1 * MB,
    }
    values.update(changes)
    return CosTarget(**values)  # type: ignore[arg-type]


def store(fake: FakeCos, **changes: object) -> CosStore:
    return CosStore(target(fake, **changes), backoff=0.01)


def random_file(tmp_path: Path, size: int, name: str = "blob") -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def test_small_and_multipart_uploads_round_trip_with_matching_crc64(fake: FakeCos, tmp_path: Path) -> None:
    cos = store(fake)
    for size in (1000, 3 * MB + 17):
        source = random_file(tmp_path, size, f"f{size}")
        crc = cos.put_file(f"t/rt/{size}", source)
        assert crc == crc64(source.read_bytes())
        back = tmp_path / f"back{size}"
        assert cos.get_file(f"t/rt/{size}", back) == crc
        assert back.read_bytes() == source.read_bytes()


def test_wrong_secret_key_is_one_line_403(fake: FakeCos) -> None:
    with pytest.raises(BackupError) as caught:
        store(fake, secret_key="not-the-key").check_bucket()
    assert str(caught.value) == f"COS bucket {BUCKET}: list bucket: SignatureDoesNotMatch (403): check COS_SECRET_KEY"


def test_missing_bucket_and_unreachable_cos_are_one_line(fake: FakeCos) -> None:
    with pytest.raises(BackupError, match=r"NoSuchBucket \(404\): check backup.cos_bucket"):
        store(fake, bucket="nope-1250000000").check_bucket()
    with pytest.raises(BackupError, match=r"unreachable \(http://127.0.0.1:1\): list bucket"):
        store(fake, endpoint="http://127.0.0.1:1").check_bucket()


def test_a_503_on_a_part_is_retried_and_the_upload_succeeds(fake: FakeCos, tmp_path: Path) -> None:
    fake.shim.faults.fail_part[2] = 2
    cos = store(fake)
    source = random_file(tmp_path, 3 * MB)
    cos.put_file("t/retry/blob", source)
    assert cos.retries == 2
    assert fake.shim.faults.fail_part[2] == 0
    assert cos.get_bytes("t/retry/blob") == source.read_bytes()


def test_a_part_failing_every_attempt_fails_in_one_line(fake: FakeCos, tmp_path: Path) -> None:
    fake.shim.faults.fail_part[3] = 10
    with pytest.raises(BackupError, match=r"upload part 3 of t/fail/blob: ServiceUnavailable \(503\)"):
        store(fake).put_file("t/fail/blob", random_file(tmp_path, 3 * MB))
    fake.shim.faults.fail_part[3] = 0


def test_an_interrupted_upload_resumes_without_resending_parts(fake: FakeCos, tmp_path: Path) -> None:
    source = random_file(tmp_path, 4 * MB)
    fake.shim.faults.fail_part[3] = 10
    with pytest.raises(BackupError):
        store(fake).put_file("t/resume/blob", source)
    fake.shim.faults.fail_part[3] = 0
    messages: list[str] = []
    cos = CosStore(target(fake), log=messages.append, backoff=0.01)
    cos.put_file("t/resume/blob", source)
    assert "resuming upload of t/resume/blob: 2 part(s) already there" in messages
    assert cos.get_bytes("t/resume/blob") == source.read_bytes()


def test_a_wrong_crc_from_cos_fails_the_upload_and_removes_the_object(fake: FakeCos, tmp_path: Path) -> None:
    fake.shim.faults.bad_crc.add("t/crc/blob")
    cos = store(fake)
    with pytest.raises(BackupError, match="t/crc/blob: CRC64 mismatch"):
        cos.put_file("t/crc/blob", random_file(tmp_path, 3 * MB))
    assert cos.objects("t/crc/") == []
    with pytest.raises(BackupError, match="CRC64 mismatch"):
        cos.put_file("t/crc/blob", random_file(tmp_path, 100, "small"))


def test_listing_and_deleting_page_past_1000_keys(fake: FakeCos) -> None:
    cos = store(fake)
    keys = [f"t/many/{n:05d}" for n in range(1005)]
    for key in keys:
        cos.put_bytes(key, b"x")
    assert [item.key for item in cos.objects("t/many/")] == keys
    cos.delete(keys)
    assert cos.objects("t/many/") == []


def test_abandoned_multipart_uploads_are_aborted(fake: FakeCos) -> None:
    cos = store(fake)
    cos.client.create_multipart_upload(Bucket=BUCKET, Key="t/stale/blob")
    assert cos.abort_stale_uploads("t/stale/", 3600) == 0
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    assert cos.abort_stale_uploads("t/stale/", 3600, now=later) == 1
    assert cos.abort_stale_uploads("t/stale/", 3600, now=later) == 0


def test_a_download_whose_crc64_differs_from_cos_is_refused_and_removed(fake: FakeCos, tmp_path: Path) -> None:
    cos = store(fake)
    cos.put_file("t/rot/blob", random_file(tmp_path, 2 * MB))
    fake.shim.faults.bad_crc.add("t/rot/blob")  # COS's CRC64 no longer matches the bytes it sends
    target = tmp_path / "down"
    with pytest.raises(BackupError, match="t/rot/blob: downloaded CRC64 differs from COS's"):
        cos.get_file("t/rot/blob", target)
    assert not target.exists()
