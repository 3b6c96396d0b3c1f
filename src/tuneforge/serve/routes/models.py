"""/v1/models: the base models this server offers (to every tenant) and the tenant's fine-tuned models."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneforge.jobs.store import FineTunedModel
from tuneforge.serve.auth import Tenant
from tuneforge.serve.deps import EngineDep, SessionDep, SettingsDep
from tuneforge.serve.engine import Target
from tuneforge.serve.errors import APIError, model_not_found
from tuneforge.serve.schemas import ModelDeleted, ModelList, ModelOut
from tuneforge.settings import Settings

router = APIRouter(prefix="/v1/models", tags=["models"])

BASE_OWNER = "tuneforge"
STARTED = int(time.time())  # base models are "created" when the server starts


def resolve_target(session: Session, settings: Settings, owner: str, model: str) -> Target:
    """The model behind an id the tenant may use, or 404."""
    if model in settings.base_models:
        return Target(model, "base", model, settings.base_models[model])
    row = session.scalar(
        select(FineTunedModel).where(FineTunedModel.id == model, FineTunedModel.owner == owner)
    )
    if row is None:
        raise model_not_found(model)
    # LoRA-family adapters share one copy of their base; other methods (full weights, or adapters of another
    # kind, which peft cannot mix with LoRA on one model) load as a model of their own.
    kind = "adapter" if row.training_type in ("lora", "rslora", "dora", "qlora") else "full"
    return Target(row.id, kind, row.base, settings.base_models.get(row.base, row.base), Path(row.run_dir))


def _base(model_id: str, created: int) -> dict:
    return {"id": model_id, "created": created, "owned_by": BASE_OWNER, "root": None}


def _tuned(row: FineTunedModel) -> dict:
    return {"id": row.id, "created": row.created_at, "owned_by": row.owner, "root": row.base}


@router.get("", response_model=ModelList, summary="List models")
def list_models(session: SessionDep, settings: SettingsDep, owner: Tenant) -> dict:
    data = [_base(m, STARTED) for m in settings.base_models]
    rows = session.scalars(
        select(FineTunedModel).where(FineTunedModel.owner == owner).order_by(FineTunedModel.pk)
    )
    return {"data": data + [_tuned(r) for r in rows]}


@router.get("/{model:path}", response_model=ModelOut, summary="Retrieve a model")
def retrieve(model: str, session: SessionDep, settings: SettingsDep, owner: Tenant) -> dict:
    target = resolve_target(session, settings, owner, model)
    if target.kind == "base":
        return _base(model, STARTED)
    return _tuned(session.scalar(select(FineTunedModel).where(FineTunedModel.id == model)))


@router.delete("/{model:path}", response_model=ModelDeleted, summary="Delete a fine-tuned model")
def delete(model: str, session: SessionDep, settings: SettingsDep, engine: EngineDep, owner: Tenant) -> dict:
    target = resolve_target(session, settings, owner, model)
    if target.kind == "base":
        raise APIError(
            403,
            f"Base model {model!r} belongs to the server and cannot be deleted.",
            param="model",
            code="model_not_deletable",
            type="invalid_request_error",
        )
    row = session.scalar(select(FineTunedModel).where(FineTunedModel.id == model))
    session.delete(row)
    session.commit()
    engine.forget(model)
    return {"id": model, "deleted": True}
