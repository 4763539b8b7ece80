"""The COS edge: objects in one bucket through cos-python-sdk-v5, checked end to end.

Uploads above one part go multipart with a Content-MD5 per part, resume an interrupted upload of the
same key (parts whose ETag matches the local MD5 are not sent again), retry each part with backoff,
and compare COS's CRC64 of the finished object with the local one (a mismatch deletes the object).
Downloads compare the CRC64 too. Every failure becomes one `BackupError` line.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import crcmod
from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_exception import CosClientError, CosServiceError

from appliance.backup.errors import BackupError, DeleteRefused
from appliance.backup.store import StoredObject

T = TypeVar("T")
MB = 1024 * 1024
CHUNK = 4 * MB
ATTEMPTS = 4
_HINTS = {
    "SignatureDoesNotMatch": "check COS_SECRET_KEY",
    "InvalidAccessKeyId": "check COS_SECRET_ID",
    "AccessDenied": "check the key's permissions on the bucket",
    "NoSuchBucket": "check backup.cos_bucket (NAME-APPID) and backup.cos_region",
}
logging.getLogger("qcloud_cos").setLevel(logging.CRITICAL)  # the SDK logs every failure with a traceback


def new_crc64() -> Any:
    """A running CRC-64/ECMA-182, the checksum COS reports as x-cos-hash-crc64ecma."""
    return crcmod.Crc(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)


@dataclass(frozen=True)
class CosTarget:
    """Where objects go: bucket, region, an optional endpoint, the credentials, the part size."""

    bucket: str
    region: str
    secret_id: str
    secret_key: str
    endpoint: str | None = None
    part_size: int = 16 * MB

    def sdk_config(self) -> CosConfig:
        """`http://IP:PORT` endpoints (a local COS) go by IP; a name is a COS endpoint domain."""
        options: dict[str, Any] = {"Region": self.region, "SecretId": self.secret_id, "SecretKey": self.secret_key}
        if self.endpoint and "://" in self.endpoint:
            url = urlsplit(self.endpoint)
            options.update(Scheme=url.scheme, IP=url.hostname, Port=url.port or (443 if url.scheme == "https" else 80))
        elif self.endpoint:
            options.update(Endpoint=self.endpoint, Scheme="https")
        else:
            options["Scheme"] = "https"
        return CosConfig(Timeout=60, **options)


def _describe(target: CosTarget, what: str, exc: Exception) -> str:
    if isinstance(exc, CosServiceError):
        code = exc.get_error_code() or "error"
        status = exc.get_status_code()
        hint = _HINTS.get(str(code), "see the COS console")
        return f"COS bucket {target.bucket}: {what}: {code} ({status}): {hint}"
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"COS bucket {target.bucket} unreachable ({target.endpoint or target.region}): {what}: {reason[:200]}"


def _retryable(exc: Exception) -> bool:
    return isinstance(exc, CosClientError) or (isinstance(exc, CosServiceError) and exc.get_status_code() >= 500)


class CosStore:
    """One bucket; `retries` counts the attempts that failed and were tried again."""

    def __init__(self, target: CosTarget, log: Callable[[str], None] = lambda line: None, backoff: float = 0.5):
        self.target = target
        self.client = CosS3Client(target.sdk_config(), retry=0)  # retries are ours: counted, backed off
        self.log = log
        self.backoff = backoff
        self.retries = 0

    def _request(
        self, what: str, operation: Callable[..., T], *, denied: type[BackupError] = BackupError, **params: Any
    ) -> T:
        """The SDK's `operation` on this store's bucket with `params`, retried with backoff; an AccessDenied raises
        `denied` (a refusal some callers expect)."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return operation(Bucket=self.target.bucket, **params)
            except (CosServiceError, CosClientError) as exc:
                if isinstance(exc, CosServiceError) and exc.get_error_code() == "AccessDenied":
                    raise denied(_describe(self.target, what, exc)) from None
                if attempt == ATTEMPTS or not _retryable(exc):
                    raise BackupError(_describe(self.target, what, exc)) from None
                self.retries += 1
                self.log(f"retrying {what} ({_describe(self.target, what, exc)})")
                time.sleep(self.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def check_bucket(self) -> None:
        """Fail early, in one line, on wrong keys or a missing bucket."""
        # A GET, not a HEAD: COS explains a refused GET in its body (a HEAD has none).
        self._request("list bucket", self.client.list_objects, MaxKeys=1)

    def put_file(self, key: str, path: Path) -> str:
        """Upload `path` as `key`; return the CRC64 COS and we agree on."""
        size = path.stat().st_size
        if size <= self.target.part_size:
            data = path.read_bytes()
            answer = self._request(f"put {key}", self.client.put_object, Key=key, Body=data, EnableMD5=True)
            local = str(_crc_of(data))
            remote = answer.get("x-cos-hash-crc64ecma")
        else:
            local = self._multipart(key, path)
            head = self._request(f"head {key}", self.client.head_object, Key=key)
            remote = head.get("x-cos-hash-crc64ecma")
        if remote != local:
            self._request(f"delete {key}", self.client.delete_object, Key=key)
            raise BackupError(f"COS bucket {self.target.bucket}: {key}: CRC64 mismatch (COS {remote}, local {local})")
        return local

    def _multipart(self, key: str, path: Path) -> str:
        upload_id, done = self._resumable(key)
        if upload_id is None:
            created = self._request(f"start upload of {key}", self.client.create_multipart_upload, Key=key)
            upload_id = str(created["UploadId"])
        else:
            self.log(f"resuming upload of {key}: {len(done)} part(s) already there")
        crc = new_crc64()
        parts = []
        with path.open("rb") as handle:
            number = 0
            while chunk := handle.read(self.target.part_size):
                number += 1
                crc.update(chunk)
                md5 = hashlib.md5(chunk).hexdigest()  # noqa: S324 - COS's ETag of a part
                if done.get(number) != md5:
                    self._request(
                        f"upload part {number} of {key}",
                        self.client.upload_part,
                        Key=key,
                        Body=chunk,
                        PartNumber=number,
                        UploadId=upload_id,
                        EnableMD5=True,
                    )
                parts.append({"PartNumber": number, "ETag": f'"{md5}"'})
        self._request(
            f"complete upload of {key}",
            self.client.complete_multipart_upload,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Part": parts},
        )
        return str(crc.crcValue)

    def _resumable(self, key: str) -> tuple[str | None, dict[int, str]]:
        """An unfinished upload of exactly `key` and its parts' MD5s, to continue instead of restarting."""
        uploads = [u for u in self._uploads(key) if u["Key"] == key]
        if not uploads:
            return None, {}
        upload_id = str(uploads[-1]["UploadId"])
        listed = self._request(f"list parts of {key}", self.client.list_parts, Key=key, UploadId=upload_id)
        parts = _as_list(listed.get("Part"))
        return upload_id, {int(p["PartNumber"]): str(p["ETag"]).strip('"') for p in parts}

    def _uploads(self, prefix: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        key_marker = upload_marker = ""
        while True:
            page = self._request(
                "list multipart uploads",
                self.client.list_multipart_uploads,
                Prefix=prefix,
                KeyMarker=key_marker,
                UploadIdMarker=upload_marker,
            )
            found += _as_list(page.get("Upload"))
            if page.get("IsTruncated") != "true":
                return found
            key_marker, upload_marker = page.get("NextKeyMarker", ""), page.get("NextUploadIdMarker", "")

    def abort_stale_uploads(self, prefix: str, older_than_seconds: int, now: datetime | None = None) -> int:
        """Abort multipart uploads under `prefix` started longer ago than that; return how many."""
        now = now or datetime.now(timezone.utc)
        aborted = 0
        for upload in self._uploads(prefix):
            started = parse_time(str(upload.get("Initiated", "")))
            if started is not None and (now - started).total_seconds() > older_than_seconds:
                self._request(
                    f"abort upload of {upload['Key']}",
                    self.client.abort_multipart_upload,
                    Key=upload["Key"],
                    UploadId=upload["UploadId"],
                )
                aborted += 1
        return aborted

    def get_file(self, key: str, path: Path) -> str:
        """Download `key` to `path`; the CRC64 must match COS's, else the file is removed."""
        answer = self._request(f"get {key}", self.client.get_object, Key=key)
        crc = new_crc64()
        try:
            with path.open("wb") as handle:
                for chunk in _chunks(answer["Body"].get_raw_stream()):
                    crc.update(chunk)
                    handle.write(chunk)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise BackupError(f"download of {key} to {path} failed: {exc.strerror or exc}") from None
        except Exception as exc:  # the SDK's stream raises urllib3/requests errors of many kinds
            path.unlink(missing_ok=True)
            raise BackupError(_describe(self.target, f"get {key}", CosClientError(str(exc)))) from None
        remote = answer.get("x-cos-hash-crc64ecma")
        if remote is not None and str(crc.crcValue) != remote:
            path.unlink(missing_ok=True)
            raise BackupError(f"COS bucket {self.target.bucket}: {key}: downloaded CRC64 differs from COS's")
        return str(crc.crcValue)

    def get_bytes(self, key: str) -> bytes:
        answer = self._request(f"get {key}", self.client.get_object, Key=key)
        return bytes(answer["Body"].get_raw_stream().read())

    def put_bytes(self, key: str, data: bytes) -> None:
        self._request(f"put {key}", self.client.put_object, Key=key, Body=data, EnableMD5=True)

    def objects(self, prefix: str) -> list[StoredObject]:
        """Every object under `prefix`, page by page (COS answers at most 1000 keys at a time)."""
        found: list[StoredObject] = []
        marker = ""
        while True:
            page = self._request(f"list {prefix}", self.client.list_objects, Prefix=prefix, Marker=marker)
            contents = _as_list(page.get("Contents"))
            found += [StoredObject(c["Key"], int(c["Size"]), str(c.get("LastModified", ""))) for c in contents]
            if page.get("IsTruncated") != "true" or not contents:
                return found
            marker = page.get("NextMarker") or contents[-1]["Key"]

    def delete(self, keys: list[str]) -> None:
        """Delete `keys`, up to 1000 per request; DeleteRefused when the key may not delete (refused for the
        whole request or object by object: either way nothing was deleted that COS did not say)."""
        for start in range(0, len(keys), 1000):
            batch = {"Object": [{"Key": key} for key in keys[start : start + 1000]], "Quiet": "true"}
            answer = self._request("delete objects", self.client.delete_objects, denied=DeleteRefused, Delete=batch)
            errors = _as_list(answer.get("Error"))
            if errors:
                first = errors[0]
                line = f"COS bucket {self.target.bucket}: delete {first.get('Key')}: {first.get('Code')}"
                raise (DeleteRefused if first.get("Code") == "AccessDenied" else BackupError)(line)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _crc_of(data: bytes) -> int:
    crc = new_crc64()
    crc.update(data)
    return int(crc.crcValue)


def _chunks(stream: Any) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK):
        yield chunk


def parse_time(text: str) -> datetime | None:
    for pattern in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            parsed = datetime.strptime(text, pattern)
        except ValueError:
            continue
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return None
