"""Per-user artifact files: metadata in PostgreSQL, bytes in a local directory or Tencent COS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from qcloud_cos import CosConfig, CosS3Client

from service.settings import Settings

ALLOWED_CONTENT_TYPES = frozenset(
    {"text/plain", "text/markdown", "text/csv", "application/json", "application/pdf", "image/png", "image/jpeg"}
)
ACCEPTED = ", ".join(sorted(ALLOWED_CONTENT_TYPES))
CHUNK_BYTES = 256 * 1024


class UploadRejectedError(Exception):
    """Too large or of a type not accepted; the message says which limit."""


class Blobs(Protocol):
    """Where the bytes live, by key `<user_id>/<file_id>`."""

    async def put(self, key: str, source: Path) -> None: ...

    def chunks(self, key: str) -> AsyncIterator[bytes]: ...

    async def delete(self, key: str) -> None: ...


class LocalBlobs:
    def __init__(self, root: Path) -> None:
        self._root = root

    async def put(self, key: str, source: Path) -> None:
        target = self._root / key
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        source.replace(target)  # same filesystem as the spool directory: an atomic rename

    async def chunks(self, key: str) -> AsyncIterator[bytes]:
        with (self._root / key).open("rb") as stream:
            while chunk := await asyncio.to_thread(stream.read, CHUNK_BYTES):
                yield chunk

    async def delete(self, key: str) -> None:
        (self._root / key).unlink(missing_ok=True)


class CosBlobs:
    """Tencent COS through cos-python-sdk-v5; the SDK is blocking, so every call runs in a thread."""

    def __init__(self, settings: Settings) -> None:
        config = CosConfig(
            Region=settings.cos_region,
            SecretId=settings.cos_secret_id,
            SecretKey=settings.cos_secret_key,
            Scheme=settings.cos_scheme,
            Domain=settings.cos_domain,  # None: the bucket's default <bucket>.cos.<region>.myqcloud.com
        )
        self._client = CosS3Client(config)
        self._bucket = settings.cos_bucket

    async def put(self, key: str, source: Path) -> None:
        def upload() -> None:
            with source.open("rb") as body:
                self._client.put_object(Bucket=self._bucket, Body=body, Key=key)

        await asyncio.to_thread(upload)
        source.unlink(missing_ok=True)

    async def chunks(self, key: str) -> AsyncIterator[bytes]:
        response = await asyncio.to_thread(self._client.get_object, Bucket=self._bucket, Key=key)
        stream = response["Body"].get_raw_stream()
        try:
            while chunk := await asyncio.to_thread(stream.read, CHUNK_BYTES):
                yield chunk
        finally:
            stream.close()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._client.delete_object, Bucket=self._bucket, Key=key)


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
            with spool.open("wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise UploadRejectedError(f"file exceeds MAX_UPLOAD_BYTES={self.max_bytes}")
                    await asyncio.to_thread(out.write, chunk)
            await self._blobs.put(key, spool)
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

    def chunks(self, user_id: uuid.UUID, file_id: uuid.UUID) -> AsyncIterator[bytes]:
        return self._blobs.chunks(f"{user_id}/{file_id}")

    async def delete(self, user_id: uuid.UUID, file_id: uuid.UUID) -> bool:
        deleted = await self._pool.fetchval(
            "DELETE FROM files WHERE id = $1 AND user_id = $2 RETURNING true", file_id, user_id
        )
        if deleted:
            await self._blobs.delete(f"{user_id}/{file_id}")
        return bool(deleted)
