"""/v1/files: upload (multipart), list, retrieve, delete, content."""

from __future__ import annotations

import os
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from tuneforge.data.readers import EXTENSIONS
from tuneforge.jobs import store
from tuneforge.jobs.store import File
from tuneforge.serve.auth import Tenant, TenantOnly
from tuneforge.serve.deps import SessionDep, SettingsDep, db_session
from tuneforge.serve.errors import bad_request, not_found
from tuneforge.serve.schemas import FileDeleted, FileList, FileObject
from tuneforge.serve.uploads import receive_upload

router = APIRouter(prefix="/v1/files", tags=["files"])

UPLOAD_PURPOSES = ("fine-tune", "user_data")
MAX_NAME = 255  # characters of a file name shown back (the width of store.File.filename)


def get_file(session, owner: str, file_id: str, param: str = "file_id") -> File:
    f = session.scalar(select(File).where(File.id == file_id, File.owner == owner))
    if f is None:
        raise not_found("File object", file_id, param)
    return f


def _client_name(raw: str | None) -> str:
    """The last part of whatever path the client sent, printable characters only: shown back, never a path."""
    name = PureWindowsPath(PurePosixPath(raw or "").name).name.strip()
    return "".join(c for c in name if c.isprintable()).strip() or "upload"


def _shortened(name: str, ext: str) -> str:
    """The name cut to the column's width, keeping its extension: it says what the file holds (and it was checked
    on the full name, so "<252 characters>.jsonl" stays a .jsonl file)."""
    if len(name) <= MAX_NAME:
        return name
    if 0 < len(ext) <= MAX_NAME // 2:
        return name[: MAX_NAME - len(ext)] + name[len(name) - len(ext) :]
    return name[:MAX_NAME]


def _shown(name: str) -> str:
    """A long name shortened for a message."""
    return name if len(name) <= 80 else f"{name[:40]}...{name[-20:]}"


def _check_purpose(purpose: str) -> None:
    if purpose not in UPLOAD_PURPOSES:
        raise bad_request(
            f"Invalid purpose {purpose!r}: tuneforge accepts {', '.join(UPLOAD_PURPOSES)}",
            "purpose",
            "invalid_value",
        )


def _checked_name(raw: str | None, purpose: str) -> tuple[str, str]:
    """The name to show back and the extension (lower case) the stored copy keeps, checked on the full name."""
    name = _client_name(raw)
    ext = os.path.splitext(name)[1].lower()
    if purpose == "fine-tune" and ext not in EXTENSIONS:
        raise bad_request(
            f"Invalid file {_shown(name)!r}: fine-tune files must be JSONL (or JSON, CSV, TSV, Parquet, XML), "
            "named with their extension",
            "file",
            "invalid_file_format",
        )
    return _shortened(name, ext), ext


def _refuse_early(filename: str, fields: dict[str, str]) -> None:
    """When the purpose came before the file (the openai client sends it first), a wrong purpose or extension is
    refused before a byte of the file is written."""
    if "purpose" in fields:
        _check_purpose(fields["purpose"])
        _checked_name(filename, fields["purpose"])


UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {
                    "file": {
                        "type": "string",
                        "contentMediaType": "application/octet-stream",  # OpenAPI 3.1's "binary"
                        "description": "The file. fine-tune: JSONL (or JSON, CSV, TSV, Parquet, XML), named "
                        "with its extension. At most TUNEFORGE_MAX_UPLOAD_BYTES.",
                    },
                    "purpose": {
                        "type": "string",
                        "enum": list(UPLOAD_PURPOSES),
                        "description": "fine-tune (training and validation data) or user_data.",
                    },
                },
            }
        }
    },
}


# The body is read by receive_upload, not by FastAPI (which would spool it whole to a temporary file before even
# checking the key): hence `request` and the body declared for the OpenAPI document by hand. TenantOnly closes
# its session before the body is read, so a slow upload holds no database connection.
@router.post(
    "", response_model=FileObject, summary="Upload a file", openapi_extra={"requestBody": UPLOAD_BODY}
)
async def upload(request: Request, settings: SettingsDep, owner: TenantOnly) -> File:
    file_id = store.new_id("file")
    partial = settings.files_dir / f"{file_id}.part"  # renamed once the whole file is in and accepted
    try:
        got = await receive_upload(request, partial, settings.max_upload_bytes, on_file=_refuse_early)
        missing = [
            name
            for name, absent in (("file", got.filename is None), ("purpose", "purpose" not in got.fields))
            if absent
        ]
        if missing:  # answered as FastAPI answers a missing form field
            raise RequestValidationError(
                [
                    {"type": "missing", "loc": ("body", name), "msg": "Field required", "input": None}
                    for name in missing
                ]
            )
        purpose = got.fields["purpose"]
        _check_purpose(purpose)
        filename, ext = _checked_name(got.filename, purpose)
        if got.size == 0:
            raise bad_request(
                "The uploaded file is empty (0 bytes): check the file you sent.", "file", "empty_file"
            )
        if got.blank and purpose == "fine-tune":
            raise bad_request(
                f"The uploaded file {_shown(filename)!r} holds no records: it contains only whitespace. "
                "A fine-tune file needs one example per line (JSONL) or per row (CSV, TSV).",
                "file",
                "empty_file",
            )
        # The stored name is ours: the id, plus the extension the data readers dispatch on.
        path = settings.files_dir / (file_id + (ext if ext in EXTENSIONS else ""))
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    row = File(
        id=file_id,
        owner=owner,
        filename=filename,
        purpose=purpose,
        bytes=got.size,
        path=str(path),
        created_at=int(store.now()),
    )
    try:
        await run_in_threadpool(_save, request, row)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return row


def _save(request: Request, row: File) -> None:
    with db_session(request) as session:
        session.add(row)
        session.commit()


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
