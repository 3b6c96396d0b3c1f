"""Exports of fine-tuned models (tuneforge's own routes, in OpenAI's style): create one from a model, list,
retrieve, download the files, delete.

    POST   /v1/models/{model}/exports     queue an export of a fine-tuned model: {"format": "gguf", "quant": "q8_0"}
    GET    /v1/exports                    the tenant's exports, newest first (`after`, `limit`)
    GET    /v1/exports/{export_id}        one export
    GET    /v1/exports/{export_id}/content  its files: the .gguf itself (gguf), else a tar of the folder
    DELETE /v1/exports/{export_id}        the files and the record

Creating an export checks everything that can be refused without loading the model (the format, the GGUF type,
a classifier run) and records it as queued; a worker writes and checks it (jobs/exports.py). The export list and
objects live under /v1/exports, not under /v1/models/{model}, because a model id may hold "/" (`{model:path}`):
only the create route sits below a model, and this router is included before the models router, so that
`/v1/models/{model}/exports` is never read as a model id ending in "/exports".
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneforge.errors import ExportError
from tuneforge.jobs import store
from tuneforge.jobs.exports import TarStream, content, remove_files, verification_status
from tuneforge.jobs.store import ExportJob, FineTunedModel
from tuneforge.serve.auth import Tenant
from tuneforge.serve.deps import SessionDep, SettingsDep
from tuneforge.serve.errors import APIError, bad_request, not_found
from tuneforge.serve.routes.models import resolve_target
from tuneforge.serve.schemas import ErrorResponse, ExportCreate, ExportDeleted, ExportList, ExportOut

router = APIRouter(tags=["exports"])


def export_out(row: ExportJob) -> dict[str, Any]:
    result = row.result or {}
    return {
        "id": row.id,
        "created_at": row.created_at,
        "finished_at": row.finished_at,
        "model": row.model,
        "format": row.format,
        "quant": row.quant,
        "status": row.status,
        "verification_status": verification_status(row),
        "verification": result.get("verification"),
        "files": result.get("files") or {},
        "bytes": result.get("bytes"),
        "error": row.error,
        "attempts": row.attempts or 0,
    }


def get_export(session: Session, owner: str, export_id: str, param: str = "export_id") -> ExportJob:
    row = session.scalar(select(ExportJob).where(ExportJob.id == export_id, ExportJob.owner == owner))
    if row is None:
        raise not_found("export", export_id, param)
    return row


@router.post("/v1/models/{model:path}/exports", response_model=ExportOut, summary="Export a fine-tuned model")
def create(model: str, body: ExportCreate, session: SessionDep, settings: SettingsDep, owner: Tenant) -> dict:
    target = resolve_target(session, settings, owner, model)  # 404 for another tenant's model
    if target.kind == "base":
        raise bad_request(
            f"Model {model!r} is a base model: there is nothing of yours to export. Fine-tune it first "
            "(POST /v1/fine_tuning/jobs) and export the fine-tuned model.",
            "model",
            "model_not_exportable",
        )
    if body.format == "merged" and body.quant:
        raise bad_request(
            "quant applies to the GGUF formats (gguf, gguf-lora, ollama); leave it out for merged, whose "
            "weights stay float.",
            "quant",
            "invalid_value",
        )
    row = session.scalar(select(FineTunedModel).where(FineTunedModel.id == model))
    export_id = store.new_id("export")
    out = settings.exports_dir / export_id
    # Imported here: the export recipe (and torch behind it) loads on the first export, not when the server starts.
    from tuneforge.recipes.export import check_request

    try:
        quant, _ = check_request(row.run_dir, body.format, body.quant, out, force=False)
    except ExportError as e:
        raise bad_request(
            str(e), "quant" if "quant" in e.problem else "model", "export_not_supported"
        ) from None
    export = ExportJob(
        id=export_id,
        owner=owner,
        model=model,
        format=body.format,
        quant=quant,
        status="queued",
        out_dir=str(out),
        created_at=int(store.now()),
        attempts=0,
    )
    session.add(export)
    session.commit()
    return export_out(export)


@router.get("/v1/exports", response_model=ExportList, summary="List exports")
def list_exports(
    session: SessionDep,
    owner: Tenant,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict:
    after_pk = get_export(session, owner, after, "after").pk if after else None
    pg = store.page(session, select(ExportJob).where(ExportJob.owner == owner), ExportJob, after_pk, limit)
    return {"data": [export_out(r) for r in pg.rows], "has_more": pg.has_more}


@router.get("/v1/exports/{export_id}", response_model=ExportOut, summary="Retrieve an export")
def retrieve(export_id: str, session: SessionDep, owner: Tenant) -> dict:
    return export_out(get_export(session, owner, export_id))


@router.get(
    "/v1/exports/{export_id}/content",
    summary="Download an export's files",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {}, "application/x-tar": {}},
            "description": "gguf: the .gguf file; merged, gguf-lora, ollama: an uncompressed tar of the folder.",
        },
        409: {"model": ErrorResponse, "description": "The export has not succeeded (yet)."},
    },
)
def download(export_id: str, session: SessionDep, owner: Tenant):
    row = get_export(session, owner, export_id)
    if row.status != "succeeded":
        why = f": {row.error['message']}" if row.status == "failed" and row.error else ""
        raise APIError(
            409,
            f"Export {export_id} is {row.status}{why}; its files can be downloaded once it has succeeded.",
            param="export_id",
            code="export_not_ready",
        )
    found = content(row)
    if found is None:
        raise not_found("export content", export_id, "export_id")
    if found.is_file:
        return FileResponse(found.path, media_type="application/octet-stream", filename=found.name)
    tar = TarStream(found.path, found.name)
    return StreamingResponse(
        iter(tar),
        media_type="application/x-tar",
        headers={
            "Content-Length": str(tar.size),
            "Content-Disposition": f'attachment; filename="{found.name}.tar"',
        },
    )


@router.delete("/v1/exports/{export_id}", response_model=ExportDeleted, summary="Delete an export")
def delete(export_id: str, session: SessionDep, owner: Tenant) -> dict:
    """The files and the record. A running export is deleted too: its worker removes what it wrote when it
    finds the export gone."""
    row = get_export(session, owner, export_id)
    out = row.out_dir
    session.delete(row)
    session.commit()
    remove_files(out)
    return {"id": export_id, "deleted": True}
