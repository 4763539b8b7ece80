"""Per-user artifact files: metadata in PostgreSQL, bytes in a local directory or Tencent COS."""

from __future__ import annotations

import asyncio
import errno
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
from qcloud_cos import CosClientError, CosConfig, CosS3Client, CosServiceError

from service.metrics import UPLOADS_REFUSED_DISK_FULL
from service.settings import Settings

ALLOWED_CONTENT_TYPES = frozenset(
    {"text/plain", "text/markdown", "text/csv", "application/json", "application/pdf", "image/png", "image/jpeg"}
)
ACCEPTED = ", ".join(sorted(ALLOWED_CONTENT_TYPES))
CHUNK_BYTES = 256 * 1024
# COS's answers that mean the key itself is wrong or lacks the right, not the request.
_REFUSED_KEY = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"})

log = logging.getLogger(__name__)
T = TypeVar("T")


class UploadRejectedError(Exception):
    """Too large or of a type not accepted; the message says which limit."""


class StorageError(Exception):
    """The file storage failed a request through no fault of the user's; the message says what the operator
    must fix and holds no secret."""


class StorageRefusedError(StorageError):
    """The storage answered, with a refusal (COS 4xx: a wrong key, a missing bucket or object)."""


class StorageUnreachableError(StorageError):
    """The storage did not answer, or answered that it cannot serve now (COS 5xx)."""


class StorageFullError(StorageError):
    """The disk that holds uploads (or their spool) has no space left."""


# ENOSPC: the filesystem is full; EDQUOT: the user's quota on it is, which the operator fixes the same way.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class _Stream(Protocol):
    def read(self, size: int) -> bytes: ...

    def close(self) -> None: ...


class Blobs(Protocol):
    """Where the bytes live, by key `<user_id>/<file_id>`."""

    async def put(self, key: str, source: Path) -> None: ...

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes; the storage has answered before this returns, so its refusal can still be an
        error response rather than a download cut short."""
        ...

    async def delete(self, key: str) -> None: ...


async def _read(stream: _Stream) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(stream.read, CHUNK_BYTES):
            yield chunk
    finally:
        stream.close()


class LocalBlobs:
    def __init__(self, root: Path) -> None:
        self._root = root

    async def put(self, key: str, source: Path) -> None:
        target = self._root / key
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        source.replace(target)  # same filesystem as the spool directory: an atomic rename

    async def open(self, key: str) -> AsyncIterator[bytes]:
        return _read(await asyncio.to_thread((self._root / key).open, "rb"))

    async def delete(self, key: str) -> None:
        (self._root / key).unlink(missing_ok=True)


def cos_config(settings: Settings) -> CosConfig:
    """The SDK's configuration for the artifact bucket, from the COS_* settings."""
    return CosConfig(
        Region=settings.cos_region,
        SecretId=settings.cos_secret_id,
        SecretKey=settings.cos_secret_key,
        Scheme=settings.cos_scheme,
        Domain=settings.cos_domain,  # None: the bucket's default <bucket>.cos.<region>.myqcloud.com
    )


def _storage_error(what: str, exc: CosServiceError | CosClientError) -> StorageError:
    """A COS failure as the error the API answers with, logged once with COS's code (never the key)."""
    if isinstance(exc, CosClientError):
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        log.warning("file storage unreachable", extra={"fields": {"operation": what, "reason": reason}})
        return StorageUnreachableError(f"file storage unreachable ({what}): try again later")
    status, code = exc.get_status_code(), exc.get_error_code()
    fields = {"operation": what, "cos_status": status, "cos_code": code, "cos_request_id": exc.get_request_id()}
    log.warning("file storage refused a request", extra={"fields": fields})
    if status >= 500:
        return StorageUnreachableError(f"file storage cannot serve now (COS {status} {code}): try again later")
    if code in _REFUSED_KEY:
        return StorageRefusedError(
            f"file storage refused the appliance's credentials (COS {status} {code}): "
            "the operator must fix COS_SECRET_ID/COS_SECRET_KEY"
        )
    return StorageRefusedError(f"file storage refused to {what} (COS {status} {code}): the operator must check COS_*")


class CosBlobs:
    """Tencent COS through cos-python-sdk-v5; the SDK is blocking, so every call runs in a thread."""

    def __init__(self, settings: Settings) -> None:
        self._client = CosS3Client(cos_config(settings))
        self._bucket = settings.cos_bucket

    async def _call(self, what: str, request: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(request)
        except (CosServiceError, CosClientError) as exc:
            raise _storage_error(what, exc) from None

    async def put(self, key: str, source: Path) -> None:
        def upload() -> None:
            with source.open("rb") as body:
                self._client.put_object(Bucket=self._bucket, Body=body, Key=key)

        await self._call("store the upload", upload)
        source.unlink(missing_ok=True)

    async def open(self, key: str) -> AsyncIterator[bytes]:
        response = await self._call("read the file", lambda: self._client.get_object(Bucket=self._bucket, Key=key))
        return _read(response["Body"].get_raw_stream())

    async def delete(self, key: str) -> None:
        await self._call("delete the file", lambda: self._client.delete_object(Bucket=self._bucket, Key=key))


def blobs_for(settings: Settings) -> Blobs:
    if settings.artifact_storage_backend == "cos":
        return CosBlobs(settings)
    return LocalBlobs(settings.artifact_storage_path)


class ArtifactStore:
    def __init__(self, pool: asyncpg.Pool, blobs: Blobs, spool_dir: Path, max_bytes: int) -> None:
        self._pool = pool
        self._blobs = blobs
        self._spool_dir = spool_dir
        self.max_bytes = max_bytes

    async def save(
        self, user_id: uuid.UUID, filename: str, content_type: str, chunks: AsyncIterator[bytes]
    ) -> dict[str, Any]:
        if content_type not in ALLOWED_CONTENT_TYPES:
            raise UploadRejectedError(f"content type {content_type!r} not accepted; use one of {ACCEPTED}")
        file_id = uuid.uuid4()
        key = f"{user_id}/{file_id}"
        # Spooled to disk first: the size limit must hold before anything reaches the backend.
        await asyncio.to_thread(self._spool_dir.mkdir, parents=True, exist_ok=True)
        spool = self._spool_dir / f"{file_id}.part"
        size = 0
        try:
            with spool.open("wb") as out:  # its close flushes, so a full disk may only show there
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise UploadRejectedError(f"file exceeds MAX_UPLOAD_BYTES={self.max_bytes}")
                    await asyncio.to_thread(out.write, chunk)
            await self._blobs.put(key, spool)
        except OSError as exc:
            if exc.errno not in _FULL:
                raise
            UPLOADS_REFUSED_DISK_FULL.inc()
            log.warning("file storage full", extra={"fields": {"path": str(self._spool_dir), "size_bytes": size}})
            raise StorageFullError(
                "no space left on the appliance's disk for uploads: try again later; "
                "the operator must free space on it (docs/runbook.md#diskfull)"
            ) from None
        finally:
            spool.unlink(missing_ok=True)
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO files (id, user_id, filename, content_type, size_bytes)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id, filename, content_type, size_bytes, created_at",
                file_id,
                user_id,
                filename[:255],
                content_type,
                size,
            )
        except BaseException:
            await asyncio.shield(self._blobs.delete(key))
            raise
        assert row is not None
        return dict(row)

    async def list(self, user_id: uuid.UUID) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "SELECT id, filename, content_type, size_bytes, created_at FROM files WHERE user_id = $1"
            " ORDER BY created_at DESC",
            user_id,
        )
        return [dict(r) for r in rows]

    async def get(self, user_id: uuid.UUID, file_id: uuid.UUID) -> dict[str, Any] | None:
        row = await self._pool.fetchrow(
            "SELECT id, filename, content_type, size_bytes, created_at FROM files WHERE id = $1 AND user_id = $2",
            file_id,
            user_id,
        )
        return dict(row) if row else None

    async def open(self, user_id: uuid.UUID, file_id: uuid.UUID) -> AsyncIterator[bytes]:
        return await self._blobs.open(f"{user_id}/{file_id}")

    async def delete(self, user_id: uuid.UUID, file_id: uuid.UUID) -> bool:
        if await self.get(user_id, file_id) is None:
            return False
        # The bytes first: if the storage refuses, the row stays and the user can retry (deleting is idempotent);
        # no database connection is held while the storage answers.
        await self._blobs.delete(f"{user_id}/{file_id}")
        deleted = await self._pool.fetchval(
            "DELETE FROM files WHERE id = $1 AND user_id = $2 RETURNING true", file_id, user_id
        )
        return bool(deleted)
