"""Stored chat completions, as OpenAI's API has them: list (by model and metadata), retrieve, update metadata,
delete, and the request's messages. Only completions made with `store: true` (or routed by a deployment that
stores) are here, and only the tenant's own: another tenant's id is a 404 like one that does not exist."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from tuneforge.jobs import feedback as fb
from tuneforge.jobs import store
from tuneforge.jobs.feedback import StoredCompletion
from tuneforge.serve.auth import Tenant
from tuneforge.serve.deps import SessionDep
from tuneforge.serve.errors import bad_request, not_found
from tuneforge.serve.schemas_feedback import (
    CompletionDeleted,
    CompletionUpdate,
    StoredCompletionList,
    StoredCompletionOut,
    StoredMessageList,
)

router = APIRouter(prefix="/v1/chat/completions", tags=["stored completions"])
METADATA_PARAM = re.compile(r"^metadata\[(.+)\]$")  # the openai client sends metadata={k: v} as metadata[k]=v


def completion_out(row: StoredCompletion) -> dict:
    return {
        "id": row.id,
        "created": row.created_at,
        "model": row.model,
        "choices": [{"index": i, "logprobs": None, **c} for i, c in enumerate(row.choices)],
        "usage": row.usage,
        "metadata": row.metadata_,
        "request_model": row.requested,
        "deployment": row.deployment,
        "shadow_of": row.shadow_of,
        "user": row.user,
    }


def get_stored(session, owner: str, completion_id: str) -> StoredCompletion:
    row = fb.get_completion(session, owner, completion_id)
    if row is None:
        raise not_found("stored chat completion", completion_id, "completion_id")
    return row


@router.get("", response_model=StoredCompletionList, summary="List stored chat completions")
def list_completions(
    request: Request,
    session: SessionDep,
    owner: Tenant,
    model: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "asc",
) -> dict:
    stmt = select(StoredCompletion).where(StoredCompletion.owner == owner)
    if model:  # the answering model, or what the request named (a deployment)
        stmt = stmt.where((StoredCompletion.model == model) | (StoredCompletion.requested == model))
    wanted = {m.group(1): v for k, v in request.query_params.items() if (m := METADATA_PARAM.match(k))}
    after_pk = get_stored(session, owner, after).pk if after else None
    if not wanted:
        pg = store.page(session, stmt, StoredCompletion, after_pk, limit, newest_first=order == "desc")
        rows, more = pg.rows, pg.has_more
    else:  # JSON equality differs between SQLite and PostgreSQL: filter the tenant's rows here
        rows = store.page(
            session, stmt, StoredCompletion, after_pk, 1_000_000, newest_first=order == "desc"
        ).rows
        rows = [r for r in rows if all((r.metadata_ or {}).get(k) == v for k, v in wanted.items())]
        rows, more = rows[:limit], len(rows) > limit
    return {
        "data": [completion_out(r) for r in rows],
        "has_more": more,
        "first_id": rows[0].id if rows else None,
        "last_id": rows[-1].id if rows else None,
    }


@router.get(
    "/{completion_id}", response_model=StoredCompletionOut, summary="Retrieve a stored chat completion"
)
def retrieve(completion_id: str, session: SessionDep, owner: Tenant) -> dict:
    return completion_out(get_stored(session, owner, completion_id))


@router.post(
    "/{completion_id}", response_model=StoredCompletionOut, summary="Update a stored completion's metadata"
)
def update(completion_id: str, body: CompletionUpdate, session: SessionDep, owner: Tenant) -> dict:
    row = get_stored(session, owner, completion_id)
    row.metadata_ = body.metadata
    session.commit()
    return completion_out(row)


@router.delete(
    "/{completion_id}", response_model=CompletionDeleted, summary="Delete a stored chat completion"
)
def delete(completion_id: str, session: SessionDep, owner: Tenant) -> dict:
    """Deletes the completion, its feedback and any shadow answers to it, for good."""
    fb.delete_completion(session, get_stored(session, owner, completion_id))
    session.commit()
    return {"id": completion_id, "deleted": True}


@router.get("/{completion_id}/messages", response_model=StoredMessageList, summary="The request's messages")
def messages(
    completion_id: str,
    session: SessionDep,
    owner: Tenant,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "asc",
) -> dict:
    row = get_stored(session, owner, completion_id)
    items = [
        {
            "id": f"{row.id}-{i}",
            "role": m.get("role"),
            "content": _text(m.get("content")),
            "name": m.get("name"),
        }
        for i, m in enumerate(row.messages)
    ]
    if order == "desc":
        items.reverse()
    if after:
        ids = [m["id"] for m in items]
        if after not in ids:
            raise bad_request(f"No message {after!r} in completion {completion_id!r}.", "after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return {
        "data": page,
        "has_more": len(items) > limit,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }


def _text(content) -> str | None:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content
