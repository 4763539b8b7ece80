"""Opt-in: the COS edge against real Tencent COS. Skipped unless these are set:
COS_LIVE_BUCKET (NAME-APPID), COS_LIVE_REGION (e.g. ap-shanghai), COS_SECRET_ID, COS_SECRET_KEY.
Objects go under cvm-appliance-live-test/ and are deleted at the end."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from appliance.backup.cos import MB, CosStore, CosTarget

NEEDED = ("COS_LIVE_BUCKET", "COS_LIVE_REGION", "COS_SECRET_ID", "COS_SECRET_KEY")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not all(os.environ.get(name) for name in NEEDED), reason=f"real COS not configured ({', '.join(NEEDED)})"
    ),
]


def test_multipart_round_trip_crc64_list_and_delete_on_real_cos(tmp_path: Path) -> None:
    cos = CosStore(
        CosTarget(
            os.environ["COS_LIVE_BUCKET"], os.environ["COS_LIVE_REGION"],
            os.environ["COS_SECRET_ID"], os.environ["COS_SECRET_KEY"], part_size=1 * MB,
        )
    )  # fmt: skip
    prefix = f"cvm-appliance-live-test/{secrets.token_hex(4)}/"
    source = tmp_path / "blob"
    source.write_bytes(os.urandom(3 * MB + 5))
    try:
        cos.check_bucket()
        crc = cos.put_file(prefix + "blob", source)
        assert cos.get_file(prefix + "blob", tmp_path / "back") == crc
        assert (tmp_path / "back").read_bytes() == source.read_bytes()
        assert [item.key for item in cos.objects(prefix)] == [prefix + "blob"]
    finally:
        cos.delete([item.key for item in cos.objects(prefix)])
        cos.abort_stale_uploads(prefix, 0)
    assert cos.objects(prefix) == []
