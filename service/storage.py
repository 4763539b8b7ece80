"""Per-user artifact files on the local disk (ARTIFACT_STORAGE_PATH)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

ALLOWED_CONTENT_TYPES = frozenset(
    {
        "text/plain",
        "text/markdown",
        "text/csv",
        "application/json",
        "application/pdf",
        "image/png",
        "image/jpeg",
    }
)


ACCEPTED = ", ".join(sorted(ALLOWED_CONTENT_TYPES))


class UploadRejectedError(Exception):
    """Too large or of a type not accepted; the message says which limit."""


class ArtifactStore:
    def __init__(self, pool: asyncpg.Pool, root: Path, max_bytes: int) -> None:
        self._pool = pool
        self._root = root
        self.max_bytes = max_bytes

    def path(self, user_id: uuid.UUID, file_id: uuid.UUID) -> Path:
        return self._root / str(user_id) / str(file_id)

    async def save(
        self, user_id: uuid.UUID, filename: str, content_type: str, chunks: AsyncIterator[bytes]
    ) -> dict[str, Any]:
        if content_type not in ALLOWED_CONTENT_TYPES:
            raise UploadRejectedError(f"content type {content_type!r} not accepted; use one of {ACCEPTED}")
        file_id = uuid.uuid4()
        target = self.path(user_id, file_id)
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        size = 0
        try:
            with target.open("wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise UploadRejectedError(f"file exceeds MAX_UPLOAD_BYTES={self.max_bytes}")
                    await asyncio.to_thread(out.write, chunk)
            row = await self._pool.fetchrow(
                "INSERT INTO files (id, user_id, filename, content_type, size_bytes)"
                " VALUES ($1, $2, $3, $4, $5)"
                " RETURNING id, filename, content_type, size_bytes, created_at",
                file_id,
                user_id,
                filename[:255],
                content_type,
                size,
            )
        except BaseException:
            target.unlink(missing_ok=True)
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

    async def delete(self, user_id: uuid.UUID, file_id: uuid.UUID) -> bool:
        deleted = await self._pool.fetchval(
            "DELETE FROM files WHERE id = $1 AND user_id = $2 RETURNING true", file_id, user_id
        )
        if deleted:
            self.path(user_id, file_id).unlink(missing_ok=True)
        return bool(deleted)
