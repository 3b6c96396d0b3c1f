"""POST /v1/fine_tuning/jobs/estimate (tuneforge): a job's peak memory and time, predicted before it is created —
what `tuneforge estimate` prints for a config, for the body a job would be created with. The console's new-job
form shows it, and refuses in the form a job that would not fit.

The server itself prepares the run (the base model is loaded, a few micro-batches may be timed), so estimates
run one at a time: a second one meanwhile is answered 429 with Retry-After.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from tuneforge.errors import TuneforgeError
from tuneforge.jobs import openai
from tuneforge.jobs.checks import JobError, check_for_method, reinforcement_rows
from tuneforge.serve.auth import Tenant
from tuneforge.serve.deps import SettingsDep, db_session
from tuneforge.serve.errors import bad_request, busy
from tuneforge.serve.routes.fine_tuning import checked_request
from tuneforge.serve.schemas import ErrorResponse, EstimateOut, JobCreate
from tuneforge.settings import Settings

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
_ONE_AT_A_TIME = threading.Lock()
RETRY_S = 5


@router.post(
    "/estimate",
    response_model=EstimateOut,
    summary="Estimate a job's memory and time (tuneforge)",
    responses={429: {"model": ErrorResponse, "description": "Another estimate is running."}},
)
def estimate(
    body: JobCreate, request: Request, settings: SettingsDep, owner: Tenant, timing: bool = True
) -> dict[str, Any]:
    """The same checks as creating the job (the same 400s), then the run prepared in a scratch folder and, with
    `timing`, a few micro-batches timed. Nothing is recorded."""
    with db_session(request) as session:  # closed before the model is loaded
        method_type, hp, files = checked_request(body, session, settings, owner)
        paths = {
            param: (Path(f.path), f"{param.replace('_', ' ')} {f.id} ({f.filename})")
            for param, f in files.items()
        }
    if not _ONE_AT_A_TIME.acquire(blocking=False):
        raise busy(
            f"Another estimate is running on this server; retry in {RETRY_S} s.", RETRY_S, "estimate_busy"
        )
    try:
        return _estimate(settings, body, method_type, hp, paths, timing)
    finally:
        _ONE_AT_A_TIME.release()


def _estimate(
    settings: Settings, body: JobCreate, method_type: str, hp, paths, timing: bool
) -> dict[str, Any]:

    with tempfile.TemporaryDirectory(prefix="tuneforge-estimate-") as scratch:
        return _estimate_in(settings, body, method_type, hp, paths, timing, Path(scratch))


def _estimate_in(
    settings: Settings, body: JobCreate, method_type: str, hp, paths, timing: bool, scratch: Path
) -> dict[str, Any]:
    from tuneforge.recipes.run import probe

    checked = {}
    grader = body.method.reinforcement.grader if method_type == "reinforcement" else None
    try:
        if grader is not None:  # the rows as the job would train on them, in a scratch copy
            paths = {
                p: (reinforcement_rows(path, p, label, grader, scratch / f"{p}.jsonl"), label)
                for p, (path, label) in paths.items()
            }
        for param, (path, label) in paths.items():
            fewest = settings.min_examples if param == "training_file" else 1
            checked[param] = check_for_method(path, param, label, method_type, fewest)
    except JobError as e:  # what the job would fail with, said now
        raise bad_request(e.message, e.param, e.code) from None
    requested = hp.openai_part()
    extras = hp.extensions()
    # probe() prepares the run in a scratch folder of its own: this run_dir is never written
    cfg = openai.job_run_config(
        settings,
        run_dir=settings.runs_dir / "estimate",
        base_source=settings.base_models[body.model],
        train_path=paths["training_file"][0],
        validation_path=paths["validation_file"][0] if "validation_file" in paths else None,
        training_type=body.training_type,
        method_type=method_type,
        resolved=openai.resolve(requested, len(checked["training_file"].examples)),
        requested=requested,
        extras=extras,
        seed=body.seed or 0,
        grader=grader,
    )
    try:
        with probe(cfg, device=settings.device) as rec:
            est = rec.estimate(timing=timing)
            total, per_epoch = rec.loop.total_steps, rec.loop.steps_per_epoch
    except TuneforgeError as e:
        raise bad_request(str(e), None, "estimate_failed") from None
    out = est.to_dict()
    out.update(total_steps=total, steps_per_epoch=per_epoch)
    if est.seconds_per_epoch is not None and per_epoch:
        out["seconds_total"] = est.seconds_per_epoch * total / per_epoch
    return out
