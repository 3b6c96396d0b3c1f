"""Deployments: a named alias (`tickets-prod`) that clients send as `model`, splitting the tenant's traffic
between model versions by weight (sticky per `user`), optionally with a shadow model that answers too but is
only stored; weights changed or a version promoted with one call; per-arm figures with the test between arms."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from tuneforge.experiments.feedback import deployment_stats
from tuneforge.jobs import feedback as fb
from tuneforge.jobs import store
from tuneforge.jobs.feedback import Deployment
from tuneforge.serve.auth import Tenant
from tuneforge.serve.deps import SessionDep, SettingsDep
from tuneforge.serve.errors import APIError, bad_request, not_found
from tuneforge.serve.routes.models import resolve_target
from tuneforge.serve.schemas_feedback import (
    DeploymentDeleted,
    DeploymentIn,
    DeploymentList,
    DeploymentOut,
    DeploymentStats,
    DeploymentUpdate,
    Promote,
)

router = APIRouter(prefix="/v1/deployments", tags=["deployments"])


def get_deployment(session, owner: str, name: str) -> Deployment:
    row = fb.get_deployment(session, owner, name)
    if row is None:
        raise not_found("deployment", name, "name")
    return row


def _checked_model(session, settings, owner: str, model: str, param: str) -> str:
    try:
        resolve_target(session, settings, owner, model)
    except APIError:
        raise bad_request(
            f"{param} names {model!r}, which is not a model you can use (GET /v1/models lists them).",
            param,
            "model_not_found",
        ) from None
    return model


def _arms(session, settings, owner: str, arms) -> list[dict]:
    out = [
        {
            "model": _checked_model(session, settings, owner, a.model, f"arms.{i}.model"),
            "weight": float(a.weight),
        }
        for i, a in enumerate(arms)
    ]
    models = [a["model"] for a in out]
    if len(set(models)) != len(models):
        raise bad_request("An arm's model appears twice: give each model one arm with its weight.", "arms")
    if sum(a["weight"] for a in out) <= 0:
        raise bad_request("Every arm's weight is 0: at least one arm must take traffic.", "arms")
    return out


@router.post("", response_model=DeploymentOut, summary="Create a deployment")
def create(body: DeploymentIn, session: SessionDep, settings: SettingsDep, owner: Tenant) -> Deployment:
    if body.name in settings.base_models:
        raise bad_request(f"{body.name!r} is a base model's id: name the deployment differently.", "name")
    if fb.get_deployment(session, owner, body.name) is not None:
        raise APIError(
            409,
            f"A deployment named {body.name!r} exists: change it with POST /v1/deployments/{body.name}.",
            param="name",
            code="deployment_exists",
        )
    t = int(store.now())
    row = Deployment(
        owner=owner,
        name=body.name,
        arms=_arms(session, settings, owner, body.arms),
        shadow=_checked_model(session, settings, owner, body.shadow, "shadow") if body.shadow else None,
        store=body.store,
        history=[],
        created_at=t,
    )
    fb.note_change(row, "created")
    session.add(row)
    session.commit()
    return row


@router.get("", response_model=DeploymentList, summary="List deployments")
def list_deployments(session: SessionDep, owner: Tenant) -> dict:
    return {
        "data": list(
            session.scalars(select(Deployment).where(Deployment.owner == owner).order_by(Deployment.pk))
        )
    }


@router.get("/{name}", response_model=DeploymentOut, summary="Retrieve a deployment")
def retrieve(name: str, session: SessionDep, owner: Tenant) -> Deployment:
    return get_deployment(session, owner, name)


@router.post("/{name}", response_model=DeploymentOut, summary="Change a deployment's arms, shadow or storing")
def change(name: str, body: DeploymentUpdate, session: SessionDep, settings: SettingsDep, owner: Tenant):
    row = get_deployment(session, owner, name)
    if body.arms is not None:
        row.arms = _arms(session, settings, owner, body.arms)
    if body.shadow is not None:
        row.shadow = _checked_model(session, settings, owner, body.shadow, "shadow") if body.shadow else None
    if body.store is not None:
        row.store = body.store
    fb.note_change(row, "changed")
    session.commit()
    return row


@router.post("/{name}/promote", response_model=DeploymentOut, summary="Send all traffic to one version")
def promote(name: str, body: Promote, session: SessionDep, settings: SettingsDep, owner: Tenant):
    row = get_deployment(session, owner, name)
    row.arms = [{"model": _checked_model(session, settings, owner, body.model, "model"), "weight": 1.0}]
    if row.shadow == body.model:
        row.shadow = None
    fb.note_change(row, f"promoted {body.model}")
    session.commit()
    return row


@router.delete("/{name}", response_model=DeploymentDeleted, summary="Delete a deployment")
def delete(name: str, session: SessionDep, owner: Tenant) -> dict:
    """The alias goes; its stored completions and the routing log stay (delete completions one by one)."""
    session.delete(get_deployment(session, owner, name))
    session.commit()
    return {"name": name, "deleted": True}


@router.get(
    "/{name}/stats", response_model=DeploymentStats, summary="Per-arm figures and the test between arms"
)
def stats(name: str, session: SessionDep, owner: Tenant) -> dict:
    row = get_deployment(session, owner, name)
    return deployment_stats(name, row.arms, row.shadow, *fb.stats_inputs(session, owner, row))
