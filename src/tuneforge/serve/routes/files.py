"""/v1/files: upload (multipart), list, retrieve, delete, content."""

from __future__ import annotations

import os
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy import select

from tuneforge.data.readers import EXTENSIONS
from tuneforge.jobs import store
from tuneforge.jobs.store import File
from tuneforge.serve.auth import Tenant
from tuneforge.serve.deps import SessionDep, SettingsDep
from tuneforge.serve.errors import APIError, bad_request, not_found
from tuneforge.serve.schemas import FileDeleted, FileList, FileObject

router = APIRouter(prefix="/v1/files", tags=["files"])

UPLOAD_PURPOSES = ("fine-tune", "user_data")
CHUNK = 1 << 20


def get_file(session, owner: str, file_id: str, param: str = "file_id") -> File:
    f = session.scalar(select(File).where(File.id == file_id, File.owner == owner))
    if f is None:
        raise not_found("File object", file_id, param)
    return f


def _client_name(raw: str | None) -> str:
    """The last part of whatever path the client sent, for display only."""
    name = PureWindowsPath(PurePosixPath(raw or "upload").name).name.strip() or "upload"
    return "".join(c for c in name if c.isprintable())[:255]


@router.post("", response_model=FileObject, summary="Upload a file")
def upload(
    file: UploadFile,
    purpose: Annotated[str, Form(description="fine-tune (training and validation data) or user_data.")],
    session: SessionDep,
    settings: SettingsDep,
    owner: Tenant,
) -> File:
    limit = settings.max_upload_bytes
    if purpose not in UPLOAD_PURPOSES:
        raise bad_request(
            f"Invalid purpose {purpose!r}: tuneforge accepts {', '.join(UPLOAD_PURPOSES)}",
            "purpose",
            "invalid_value",
        )
    filename = _client_name(file.filename)
    ext = os.path.splitext(filename)[1].lower()
    if purpose == "fine-tune" and ext not in EXTENSIONS:
        raise bad_request(
            f"Invalid file {filename!r}: fine-tune files must be JSONL (or JSON, CSV, TSV, Parquet, XML), "
            "named with their extension",
            "file",
            "invalid_file_format",
        )
    file_id = store.new_id("file")
    # The stored name is ours: the id, plus the extension the data readers dispatch on.
    path = settings.files_dir / (file_id + (ext if ext in EXTENSIONS else ""))
    size = 0
    try:
        with open(path, "wb") as out:
            while chunk := file.file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise APIError(
                        413,
                        f"File too large: the limit is {limit:,} bytes (TUNEFORGE_MAX_UPLOAD_BYTES).",
                        param="file",
                        code="file_too_large",
                    )
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise bad_request("The uploaded file is empty.", "file", "empty_file")
    row = File(
        id=file_id,
        owner=owner,
        filename=filename,
        purpose=purpose,
        bytes=size,
        path=str(path),
        created_at=int(store.now()),
    )
    session.add(row)
    session.commit()
    return row


@router.get("", response_model=FileList, summary="List files")
def list_files(
    session: SessionDep,
    owner: Tenant,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> dict:
    stmt = select(File).where(File.owner == owner)
    if purpose:
        stmt = stmt.where(File.purpose == purpose)
    after_pk = get_file(session, owner, after, "after").pk if after else None
    pg = store.page(session, stmt, File, after_pk, limit, newest_first=order == "desc")
    return {
        "data": pg.rows,
        "has_more": pg.has_more,
        "first_id": pg.rows[0].id if pg.rows else None,
        "last_id": pg.rows[-1].id if pg.rows else None,
    }


@router.get("/{file_id}", response_model=FileObject, summary="Retrieve a file")
def retrieve(file_id: str, session: SessionDep, owner: Tenant) -> File:
    return get_file(session, owner, file_id)


@router.delete("/{file_id}", response_model=FileDeleted, summary="Delete a file")
def delete(file_id: str, session: SessionDep, owner: Tenant) -> dict:
    f = get_file(session, owner, file_id)
    session.delete(f)
    session.commit()
    try:
        os.unlink(f.path)
    except FileNotFoundError:
        pass
    return {"id": file_id, "deleted": True}


@router.get(
    "/{file_id}/content",
    summary="Retrieve a file's content",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file's bytes."}},
)
def content(file_id: str, session: SessionDep, owner: Tenant) -> FileResponse:
    f = get_file(session, owner, file_id)
    if not os.path.isfile(f.path):
        raise not_found("File content", file_id, "file_id")
    return FileResponse(f.path, media_type="application/octet-stream", filename=f.filename)
