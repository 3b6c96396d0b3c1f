"""/health: liveness for anyone, readiness for a tenant.

- `GET /health` (and `/health/live`): the process answers — no key needed, nothing touched, nothing told. For a
  supervisor or a load balancer deciding whether to restart the process.
- `GET /health/ready`: with an API key — the database answers, how many workers are alive, the generation slots
  in use, and the caller's own jobs and loaded models. Other tenants' work is never counted: unauthenticated
  totals of queued jobs and loaded model ids told anyone who could reach the port what others were doing.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, text

from tuneforge.jobs import store
from tuneforge.jobs.store import FineTunedModel, Job
from tuneforge.serve.auth import Tenant
from tuneforge.serve.deps import EngineDep, SessionDep, SettingsDep
from tuneforge.serve.schemas import Liveness, Readiness

router = APIRouter(tags=["health"])

LIVE = {"status": "ok"}


@router.get("/health", response_model=Liveness, summary="Liveness (no key)")
def health() -> dict:
    return LIVE


@router.get("/health/live", response_model=Liveness, summary="Liveness (no key)")
def live() -> dict:
    return LIVE


@router.get(
    "/health/ready",
    response_model=Readiness,
    summary="Readiness, as your tenant sees it",
    responses={503: {"model": Readiness, "description": "The database does not answer."}},
)
def ready(session: SessionDep, settings: SettingsDep, engine: EngineDep, owner: Tenant):
    out = {
        "status": "ok",
        "database": "ok",
        "workers": 0,
        "queued_jobs": 0,
        "running_jobs": 0,
        "models_loaded": {},
        "generations_running": engine.running,
        "generations_waiting": engine.waiting,
    }
    try:
        session.execute(text("SELECT 1"))
        counts = dict(
            session.execute(
                select(Job.status, func.count())
                .where(Job.owner == owner, Job.status.in_(("validating_files", "queued", "running")))
                .group_by(Job.status)
            ).all()
        )
        out["queued_jobs"] = counts.get("queued", 0) + counts.get("validating_files", 0)
        out["running_jobs"] = counts.get("running", 0)
        out["workers"] = len(store.live_workers(session, settings.lease_s))
        own = set(session.scalars(select(FineTunedModel.id).where(FineTunedModel.owner == owner)))
        out["models_loaded"] = own_models(engine.loaded(), own)
    except Exception as e:  # the database is down: not ready
        out.update(status="degraded", database=f"error: {type(e).__name__}")
        return JSONResponse(out, status_code=503)
    return out


def own_models(loaded: dict[str, list[str]], own: set[str]) -> dict[str, list[str]]:
    """The engine's models as a tenant may see them: every base (bases are offered to all tenants) with only the
    tenant's adapters on it, and the tenant's own full models (keys `full:<model id>`). A key of any other kind
    is shown only if it names one of the tenant's models: what is not known to be shared stays private."""
    out: dict[str, list[str]] = {}
    for key, adapters in loaded.items():
        kind, _, model_id = key.partition(":")
        if kind == "base" or model_id in own:
            out[key] = [a for a in adapters if a in own]
    return out
