"""GET /v1/fine_tuning/jobs/{id}/report (tuneforge): the before/after report of a job that held out a test split
(`test_split`): the base and the tuned model on the same held-out questions — the metrics table and the gain,
per-field figures with confusion matrices, sample answers side by side, validation loss, and the forgetting
figure — as `tuneforge train` writes it (report.json). The console's job page shows it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select

from tuneforge.jobs.store import File
from tuneforge.serve.auth import Tenant
from tuneforge.serve.deps import SettingsDep, db_session
from tuneforge.serve.errors import APIError
from tuneforge.serve.routes.file_reports import places, renamed_json
from tuneforge.serve.routes.fine_tuning import get_job

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


@router.get(
    "/{fine_tuning_job_id}/report",
    response_model=dict[str, Any],
    summary="A job's before/after report (tuneforge)",
    description="tuneforge: for a job created with `test_split`, once it has trained. Places in the training file "
    "are `line N`; the models are named by their ids. 409 while there is none (no test split, or not trained yet).",
)
def report(fine_tuning_job_id: str, request: Request, settings: SettingsDep, owner: Tenant) -> dict[str, Any]:
    with db_session(request) as session:
        job = get_job(session, owner, fine_tuning_job_id)
        train = session.scalar(select(File).where(File.id == job.training_file))
        status, run_dir, model, tuned = job.status, job.run_dir, job.model, job.fine_tuned_model
        has_test = bool((job.extras or {}).get("test_split"))
    if not has_test:
        raise _none(
            f"Job {fine_tuning_job_id} held out no test split, so it has no before/after report: create the job "
            'with a test share, e.g. "hyperparameters": {"test_split": 0.1}.',
            "no_test_split",
        )
    path = Path(run_dir) / "report.json" if run_dir else None
    if status != "succeeded" or path is None or not path.is_file():
        raise _none(
            f"The report of job {fine_tuning_job_id} is written once it has trained and evaluated (status: "
            f"{status}).",
            "report_not_ready",
        )
    # What the server's paths mean to the user: lines of their file, the models' ids.
    renames = places(train.path, train.filename) if train is not None else []
    renames.append((str(Path(run_dir)), tuned or fine_tuning_job_id))
    source = settings.base_models.get(model)
    if source:
        renames.append((source, model))
    out = renamed_json(json.loads(path.read_text(encoding="utf-8")), renames)
    out.update(base_model=model, tuned_model=tuned)
    return out


def _none(message: str, code: str) -> APIError:
    return APIError(409, message, param="fine_tuning_job_id", code=code, type="invalid_request_error")
