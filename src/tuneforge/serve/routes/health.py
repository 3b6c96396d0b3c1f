"""/health: readiness — the database answers, and what the workers and the engine are doing."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, text

from tuneforge.jobs import store
from tuneforge.jobs.store import Job
from tuneforge.serve.deps import EngineDep, SessionDep, SettingsDep
from tuneforge.serve.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Readiness", responses={503: {"model": Health}})
def health(session: SessionDep, settings: SettingsDep, engine: EngineDep):
    out = {
        "status": "ok",
        "database": "ok",
        "workers": 0,
        "queued_jobs": 0,
        "running_jobs": 0,
        "models_loaded": engine.loaded(),
        "generations_running": engine.running,
        "generations_waiting": engine.waiting,
    }
    try:
        session.execute(text("SELECT 1"))
        counts = dict(
            session.execute(
                select(Job.status, func.count())
                .where(Job.status.in_(("validating_files", "queued", "running")))
                .group_by(Job.status)
            ).all()
        )
        out["queued_jobs"] = counts.get("queued", 0) + counts.get("validating_files", 0)
        out["running_jobs"] = counts.get("running", 0)
        out["workers"] = len(store.live_workers(session, settings.lease_s))
    except Exception as e:  # the database is down: not ready
        out.update(status="degraded", database=f"error: {type(e).__name__}")
        return JSONResponse(out, status_code=503)
    return out
