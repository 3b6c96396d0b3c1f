"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints.

Creating a job only records it (status `validating_files`); a worker process does the rest.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneforge.jobs import store
from tuneforge.jobs.graders import GraderError, rewards_from_grader
from tuneforge.jobs.openai import checkpoint_model_id, fine_tuned_model_id
from tuneforge.jobs.store import Job, JobCheckpoint, JobEvent
from tuneforge.serve.auth import Tenant
from tuneforge.serve.deps import SessionDep, SettingsDep
from tuneforge.serve.errors import bad_request, not_found
from tuneforge.serve.schemas import (
    CheckpointList,
    DpoHyperparametersIn,
    EventList,
    HyperparametersIn,
    JobCreate,
    JobList,
    JobOut,
    KtoHyperparametersIn,
    ReinforcementHyperparametersIn,
)

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


def job_out(job: Job) -> dict[str, Any]:
    hp = job.resolved or job.hyperparameters
    return {
        "id": job.id,
        "created_at": job.created_at,
        "error": job.error,
        "fine_tuned_model": job.fine_tuned_model,
        "finished_at": job.finished_at,
        "hyperparameters": hp,
        "method": {
            "type": job.method_type,
            job.method_type: {"hyperparameters": hp} | ({"grader": job.grader} if job.grader else {}),
        },
        "model": job.model,
        "organization_id": job.owner,
        "result_files": job.result_files or [],
        "seed": job.seed,
        "status": job.status,
        "trained_tokens": job.trained_tokens,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "estimated_finish": job.estimated_finish if job.status == "running" else None,
        "integrations": [],
        "metadata": job.metadata_,
        "user_provided_suffix": job.suffix,
        "training_type": job.training_type,
        "hyperparameter_extensions": job.extras or {},
        "step": job.step or 0,
        "total_steps": job.total_steps,
        "attempts": job.attempts,
        "failures": job.failures or [],
    }


def get_job(session: Session, owner: str, job_id: str, param: str = "fine_tuning_job_id") -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.owner == owner))
    if job is None:
        raise not_found("fine-tuning job", job_id, param)
    return job


def checked_request(
    body: JobCreate, session: Session, settings, owner: str
) -> tuple[str, HyperparametersIn, dict[str, store.File]]:
    """What creating a job checks before recording it (the base offered, the method, the files the tenant's and
    meant for fine-tuning): its method type, hyperparameters and files by parameter. The estimate checks the same."""
    if body.model not in settings.base_models:
        offered = ", ".join(sorted(settings.base_models))
        raise bad_request(
            f"Model {body.model!r} is not available for fine-tuning on this server (available: {offered}).",
            "model",
            "model_not_available",
        )
    method_type, hp = _hyperparameters(body)
    if method_type == "reinforcement":
        try:
            rewards_from_grader(body.method.reinforcement.grader)
        except GraderError as e:
            raise bad_request(str(e), "method.reinforcement.grader", "unsupported_grader") from None
    files: dict[str, store.File] = {}
    for param, fid in (("training_file", body.training_file), ("validation_file", body.validation_file)):
        if fid is None:
            continue
        f = session.scalar(select(store.File).where(store.File.id == fid, store.File.owner == owner))
        if f is None:
            raise bad_request(f"Invalid file id {fid!r}: no such file.", param, "invalid_file")
        if f.purpose != "fine-tune":
            raise bad_request(
                f"File {fid} has purpose {f.purpose!r}; upload it with purpose 'fine-tune'.",
                param,
                "invalid_file",
            )
        files[param] = f
    return method_type, hp, files


@router.post("", response_model=JobOut, summary="Create a fine-tuning job")
def create(body: JobCreate, session: SessionDep, settings: SettingsDep, owner: Tenant) -> dict:
    method_type, hp, _ = checked_request(body, session, settings, owner)
    job = Job(
        id=store.new_id("ftjob"),
        owner=owner,
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        suffix=body.suffix,
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        training_type=body.training_type,
        method_type=method_type,
        hyperparameters=hp.openai_part(),
        extras=hp.extensions(),
        metadata_=body.metadata,
        grader=body.method.reinforcement.grader if method_type == "reinforcement" else None,
        status="validating_files",
        created_at=int(store.now()),
        failures=[],
        result_files=[],
    )
    session.add(job)
    session.flush()
    store.add_event(session, job.id, f"Created fine-tuning job: {job.id}")
    session.commit()
    return job_out(job)


METHOD_NAMES = {"dpo": "DPO", "kto": "KTO", "reinforcement": "Reinforcement fine-tuning (GRPO)"}


def _hyperparameters(body: JobCreate) -> tuple[str, HyperparametersIn]:
    """The job's method type and its hyperparameters, from `method` or the deprecated top-level field."""
    method_type = body.method.type if body.method is not None else "supervised"
    if method_type == "reinforcement" and body.method.reinforcement is None:
        raise bad_request(
            'A reinforcement job needs method.reinforcement.grader, e.g. {"type": "string_check", "input": '
            '"{{sample.output_text}}", "reference": "{{item.reference_answer}}", "operation": "eq"}.',
            "method.reinforcement",
            "missing_grader",
        )
    if method_type != "supervised":
        from tuneforge.methods import registry

        if registry.get(body.training_type).artifact != "adapter":
            raise bad_request(
                f"{METHOD_NAMES[method_type]} compares the model with its base, which is the same weights with the adapter "
                f"switched off, so it needs an adapter method; training_type {body.training_type!r} trains the "
                "weights themselves. Use training_type 'lora' (or dora, rslora, ia3 ...).",
                "training_type",
                "unsupported_method",
            )
    section = getattr(body.method, method_type, None) if body.method is not None else None
    in_method = section.hyperparameters if section is not None else None
    if in_method is not None and body.hyperparameters is not None:
        raise bad_request(
            f"Give hyperparameters in method.{method_type}.hyperparameters or in hyperparameters, not both.",
            "hyperparameters",
        )
    if method_type != "supervised":
        cls = {
            "dpo": DpoHyperparametersIn,
            "kto": KtoHyperparametersIn,
            "reinforcement": ReinforcementHyperparametersIn,
        }[method_type]
        top = cls(**body.hyperparameters.model_dump(exclude_none=True)) if body.hyperparameters else None
        return method_type, in_method or top or cls()
    return method_type, in_method or body.hyperparameters or HyperparametersIn()


@router.get("", response_model=JobList, summary="List fine-tuning jobs")
def list_jobs(
    session: SessionDep,
    owner: Tenant,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict:
    after_pk = get_job(session, owner, after, "after").pk if after else None
    pg = store.page(session, select(Job).where(Job.owner == owner), Job, after_pk, limit)
    return {"data": [job_out(j) for j in pg.rows], "has_more": pg.has_more}


@router.get("/{fine_tuning_job_id}", response_model=JobOut, summary="Retrieve a fine-tuning job")
def retrieve(fine_tuning_job_id: str, session: SessionDep, owner: Tenant) -> dict:
    return job_out(get_job(session, owner, fine_tuning_job_id))


def _control(session: Session, owner: str, job_id: str, action: str) -> dict:
    """Cancel, pause or resume as one compare-and-set on the job row (store.control_job, whose table says what
    each request does in each state): a queued or paused job changes at once, a running one gets a request its
    worker acts on at its next step. The answer is the job as the request left it; 400 if refused."""
    job = get_job(session, owner, job_id)
    answer = store.control_job(session, job.id, action)
    if answer.refused is not None:
        session.rollback()
        verb = {"cancel": "cancelled", "pause": "paused", "resume": "resumed"}[action]
        raise bad_request(
            f"Job {job.id} cannot be {verb}: {answer.refused}.", "fine_tuning_job_id", "invalid_job_state"
        )
    session.refresh(job)  # still inside the transaction: the state this request left, whatever comes next
    session.commit()
    return job_out(job)


@router.post("/{fine_tuning_job_id}/cancel", response_model=JobOut, summary="Cancel a fine-tuning job")
def cancel(fine_tuning_job_id: str, session: SessionDep, owner: Tenant) -> dict:
    return _control(session, owner, fine_tuning_job_id, "cancel")


@router.post("/{fine_tuning_job_id}/pause", response_model=JobOut, summary="Pause a fine-tuning job")
def pause(fine_tuning_job_id: str, session: SessionDep, owner: Tenant) -> dict:
    return _control(session, owner, fine_tuning_job_id, "pause")


@router.post("/{fine_tuning_job_id}/resume", response_model=JobOut, summary="Resume a paused fine-tuning job")
def resume(fine_tuning_job_id: str, session: SessionDep, owner: Tenant) -> dict:
    return _control(session, owner, fine_tuning_job_id, "resume")


@router.get("/{fine_tuning_job_id}/events", response_model=EventList, summary="List a job's events")
def events(
    fine_tuning_job_id: str,
    session: SessionDep,
    owner: Tenant,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict:
    job = get_job(session, owner, fine_tuning_job_id)
    after_pk = None
    if after:
        after_pk = session.scalar(select(JobEvent.pk).where(JobEvent.id == after, JobEvent.job_id == job.id))
        if after_pk is None:
            raise not_found("fine-tuning job event", after, "after")
    pg = store.page(session, select(JobEvent).where(JobEvent.job_id == job.id), JobEvent, after_pk, limit)
    return {"data": pg.rows, "has_more": pg.has_more}


@router.get(
    "/{fine_tuning_job_id}/checkpoints", response_model=CheckpointList, summary="List a job's checkpoints"
)
def checkpoints(
    fine_tuning_job_id: str,
    session: SessionDep,
    owner: Tenant,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict:
    job = get_job(session, owner, fine_tuning_job_id)
    after_pk = None
    if after:
        after_pk = session.scalar(
            select(JobCheckpoint.pk).where(JobCheckpoint.id == after, JobCheckpoint.job_id == job.id)
        )
        if after_pk is None:
            raise not_found("fine-tuning checkpoint", after, "after")
    pg = store.page(
        session, select(JobCheckpoint).where(JobCheckpoint.job_id == job.id), JobCheckpoint, after_pk, limit
    )
    model = fine_tuned_model_id(job.model, job.owner, job.suffix, job.id)
    data = [
        {
            "id": c.id,
            "created_at": c.created_at,
            "fine_tuned_model_checkpoint": checkpoint_model_id(model, c.step_number),
            "fine_tuning_job_id": job.id,
            "metrics": c.metrics,
            "step_number": c.step_number,
        }
        for c in pg.rows
    ]
    return {
        "data": data,
        "has_more": pg.has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
