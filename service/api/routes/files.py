"""/api/files: per-user artifact upload, list, download, delete."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Response, UploadFile, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from service.api.deps import Res, UserId, not_found
from service.storage import (
    CHUNK_BYTES,
    StorageFullError,
    StorageRefusedError,
    StorageUnreachableError,
    UploadRejectedError,
)

router = APIRouter(prefix="/api/files", tags=["files"])


class FileOut(BaseModel):
    id: uuid.UUID
    filename: str
    content_type: str
    size_bytes: int
    created_at: datetime.datetime


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk


@contextmanager
def _storage_answers() -> Iterator[None]:
    """The file storage's failures are the operator's to fix, so a 5xx that says which, never a bare 500:
    502 when it refused (a wrong COS key), 503 when it could not be reached, 507 when its disk is full."""
    try:
        yield
    except StorageRefusedError as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, str(exc)) from None
    except StorageUnreachableError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    except StorageFullError as exc:
        raise HTTPException(status.HTTP_507_INSUFFICIENT_STORAGE, str(exc)) from None


@router.post("", status_code=status.HTTP_201_CREATED)
async def upload(file: UploadFile, user_id: UserId, res: Res) -> FileOut:
    content_type = (file.content_type or "application/octet-stream").split(";")[0].strip()
    try:
        filename = (file.filename or "").replace("\x00", "") or "upload"  # PostgreSQL text has no NUL
        with _storage_answers():
            row = await res.store.save(user_id, filename, content_type, _chunks(file))
    except UploadRejectedError as exc:
        code = status.HTTP_413_CONTENT_TOO_LARGE if "exceeds" in str(exc) else status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
        raise HTTPException(code, str(exc)) from None
    return FileOut(**row)


@router.get("")
async def list_files(user_id: UserId, res: Res) -> list[FileOut]:
    return [FileOut(**r) for r in await res.store.list(user_id)]


@router.get("/{file_id}")
async def download(file_id: uuid.UUID, user_id: UserId, res: Res) -> StreamingResponse:
    row = await res.store.get(user_id, file_id)
    if row is None:
        raise not_found("file")
    headers = {
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(row['filename'])}",
        "Content-Length": str(row["size_bytes"]),
    }
    with _storage_answers():
        chunks = await res.store.open(user_id, file_id)
    return StreamingResponse(chunks, media_type=row["content_type"], headers=headers)


@router.delete("/{file_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete(file_id: uuid.UUID, user_id: UserId, res: Res) -> Response:
    with _storage_answers():
        deleted = await res.store.delete(user_id, file_id)
    if not deleted:
        raise not_found("file")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
