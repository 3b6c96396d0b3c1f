"""Feedback on stored completions (thumbs, a 1-5 score, a corrected answer, a comment; one verdict per user and
completion, replaced when sent again), and training files made from all of it (KTO, DPO, SFT: see
experiments/feedback.py for what goes where)."""

from __future__ import annotations

from fastapi import APIRouter

from tuneforge.experiments.feedback import KINDS, build_datasets
from tuneforge.jobs import feedback as fb
from tuneforge.jobs import store
from tuneforge.jobs.store import File
from tuneforge.serve.auth import Tenant
from tuneforge.serve.deps import SessionDep, SettingsDep
from tuneforge.serve.errors import bad_request
from tuneforge.serve.routes.stored import get_stored
from tuneforge.serve.schemas_feedback import DatasetsIn, DatasetsOut, FeedbackIn, FeedbackList, FeedbackOut

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post(
    "/chat/completions/{completion_id}/feedback",
    response_model=FeedbackOut,
    summary="Rate a stored completion",
)
def give_feedback(completion_id: str, body: FeedbackIn, session: SessionDep, owner: Tenant) -> fb.Feedback:
    get_stored(session, owner, completion_id)
    values = body.model_dump(exclude={"user"})
    if not any(values.values()):
        raise bad_request(
            "Feedback needs at least one of thumbs, score, correction or comment.", "thumbs", "empty_feedback"
        )
    row, _ = fb.put_feedback(session, owner, completion_id, body.user, **values)
    session.commit()
    return row


@router.get(
    "/chat/completions/{completion_id}/feedback",
    response_model=FeedbackList,
    summary="A completion's feedback",
)
def list_feedback(completion_id: str, session: SessionDep, owner: Tenant) -> dict:
    get_stored(session, owner, completion_id)
    return {"data": fb.feedback_for(session, owner, [completion_id]).get(completion_id, [])}


@router.post("/feedback/datasets", response_model=DatasetsOut, summary="Training files from feedback")
def datasets(body: DatasetsIn, session: SessionDep, settings: SettingsDep, owner: Tenant) -> dict:
    """Writes kto / dpo / sft files (purpose fine-tune) from the tenant's stored completions and their feedback,
    ready for a fine-tuning job, and says what was used and what was skipped and why."""
    built = build_datasets(fb.answers(session, owner, deployment=body.deployment, model=body.model))
    files: dict[str, str] = {}
    for kind in KINDS:
        if not getattr(built, kind):
            continue
        file_id = store.new_id("file")
        dest = settings.files_dir / f"{file_id}.jsonl"
        dest.write_text(built.jsonl(kind))
        session.add(
            File(
                id=file_id,
                owner=owner,
                filename=f"feedback-{kind}.jsonl",
                purpose="fine-tune",
                bytes=dest.stat().st_size,
                path=str(dest),
                created_at=int(store.now()),
            )
        )
        files[kind] = file_id
    session.commit()
    return {"files": files, "counts": built.counts()}
