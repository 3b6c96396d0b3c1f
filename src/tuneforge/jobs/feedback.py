"""What real use leaves behind: stored completions, the feedback on them, deployments (a named alias that splits a
tenant's traffic between model versions) and the log of the requests each deployment routed.

Nothing is stored unless the request asks (`store: true`, OpenAI's parameter) or the tenant's deployment does
(`store: true` on the deployment, or a shadow model, whose comparison needs both answers). Deleting a completion
deletes its feedback with it; the routing log keeps no text, only counts and times, so it outlives the content.

Every row carries `owner`, and every function here filters on it: another tenant's id is "not there".
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, String, Text, UniqueConstraint, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from tuneforge.jobs.store import Base, now


class StoredCompletion(Base):
    __tablename__ = "stored_completions"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)  # the chat completion's id (chatcmpl-...)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(255), index=True)  # the model that answered
    requested: Mapped[str] = mapped_column(String(255))  # what the client asked for: a model or a deployment
    deployment: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    shadow_of: Mapped[str | None] = mapped_column(
        String(64), nullable=True, index=True
    )  # the answer it shadowed
    user: Mapped[str | None] = mapped_column(String(256), nullable=True)
    messages: Mapped[list[Any]] = mapped_column(JSON)  # the request's messages, as sent
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # temperature, max_tokens ... as sent
    choices: Mapped[list[Any]] = mapped_column(JSON)  # [{message: {role, content}, finish_reason}]
    usage: Mapped[dict[str, Any]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[int] = mapped_column(Integer)


class Feedback(Base):
    """One user's verdict on one stored completion; sending it again replaces it (idempotent per user)."""

    __tablename__ = "completion_feedback"
    __table_args__ = (UniqueConstraint("completion_id", "user"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    completion_id: Mapped[str] = mapped_column(String(64), index=True)
    user: Mapped[str] = mapped_column(String(256), default="")
    thumbs: Mapped[str | None] = mapped_column(String(4), nullable=True)  # "up" | "down"
    score: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 1..5
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)  # the answer it should have been
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[int] = mapped_column(Integer)


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("owner", "name"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(64))
    arms: Mapped[list[Any]] = mapped_column(JSON)  # [{"model": id, "weight": w}], weights > 0
    shadow: Mapped[str | None] = mapped_column(String(255), nullable=True)  # answers too; only stored
    store: Mapped[bool] = mapped_column(Boolean, default=False)  # store every answer it routes
    history: Mapped[list[Any]] = mapped_column(JSON, default=list)  # [{at, arms, shadow, why}] of each change
    created_at: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[int] = mapped_column(Integer)


class RoutedRequest(Base):
    """One answer a deployment routed (or shadowed): counts and times, no text."""

    __tablename__ = "deployment_requests"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    deployment: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(255))
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    user: Mapped[str | None] = mapped_column(String(256), nullable=True)
    completion_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer)


# ------------------------------------------------------------------------------------------ completions
def get_completion(s: Session, owner: str, completion_id: str) -> StoredCompletion | None:
    return s.scalar(
        select(StoredCompletion).where(StoredCompletion.id == completion_id, StoredCompletion.owner == owner)
    )


def delete_completion(s: Session, row: StoredCompletion) -> None:
    """The completion, its feedback, and the answers that shadowed it; the routing log forgets the id."""
    ids = [row.id] + list(
        s.scalars(
            select(StoredCompletion.id).where(
                StoredCompletion.shadow_of == row.id, StoredCompletion.owner == row.owner
            )
        )
    )
    s.execute(delete(Feedback).where(Feedback.completion_id.in_(ids), Feedback.owner == row.owner))
    s.execute(
        update(RoutedRequest)
        .where(RoutedRequest.completion_id.in_(ids), RoutedRequest.owner == row.owner)
        .values(completion_id=None)
    )
    s.execute(
        delete(StoredCompletion).where(StoredCompletion.id.in_(ids), StoredCompletion.owner == row.owner)
    )


def put_feedback(
    s: Session, owner: str, completion_id: str, user: str, **values: Any
) -> tuple[Feedback, bool]:
    """Create or replace `user`'s feedback on the completion; (row, created)."""
    row = s.scalar(
        select(Feedback).where(
            Feedback.completion_id == completion_id, Feedback.user == user, Feedback.owner == owner
        )
    )
    t = int(now())
    created = row is None
    if created:
        row = Feedback(owner=owner, completion_id=completion_id, user=user, created_at=t)
        s.add(row)
    for k, v in values.items():
        setattr(row, k, v)
    row.updated_at = t
    return row, created


def feedback_for(s: Session, owner: str, completion_ids: list[str]) -> dict[str, list[Feedback]]:
    out: dict[str, list[Feedback]] = {}
    for chunk in range(0, len(completion_ids), 500):
        ids = completion_ids[chunk : chunk + 500]
        for f in s.scalars(select(Feedback).where(Feedback.owner == owner, Feedback.completion_id.in_(ids))):
            out.setdefault(f.completion_id, []).append(f)
    return out


# ------------------------------------------------------------------------------------------ deployments
def get_deployment(s: Session, owner: str, name: str) -> Deployment | None:
    return s.scalar(select(Deployment).where(Deployment.owner == owner, Deployment.name == name))


def note_change(d: Deployment, why: str, **extra: Any) -> None:
    """Stamp a change of the deployment and keep it in its history, with the arms and shadow it left."""
    d.updated_at = int(now())
    d.history = [*d.history, {"at": d.updated_at, "arms": d.arms, "shadow": d.shadow, "why": why, **extra}]


@dataclass(frozen=True)
class Route:
    """Where a deployment sends one request."""

    deployment: str
    model: str
    shadow: str | None
    store: bool


def bucket(deployment: str, user: str | None) -> float:
    """A user's fixed place in [0, 1) for this deployment (sticky: one person sees one version while the weights
    stay); without a user, a fresh draw per request."""
    if not user:
        return random.random()
    h = hashlib.sha256(f"{deployment}\0{user}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def pick(arms: list[dict[str, Any]], at: float) -> str:
    """The arm whose share of [0, 1), in the arms' order, holds `at`."""
    total = sum(a["weight"] for a in arms)
    edge = 0.0
    for a in arms:
        edge += a["weight"] / total
        if at < edge:
            return a["model"]
    return arms[-1]["model"]


def route(d: Deployment, user: str | None) -> Route:
    return Route(d.name, pick(d.arms, bucket(d.name, user)), d.shadow, d.store or d.shadow is not None)


def record_request(
    s: Session,
    owner: str,
    r: Route,
    model: str,
    shadow: bool,
    user: str | None,
    completion_id: str | None,
    latency_ms: float,
    usage: dict[str, int],
) -> None:
    s.add(
        RoutedRequest(
            owner=owner,
            deployment=r.deployment,
            model=model,
            shadow=shadow,
            user=user,
            completion_id=completion_id,
            latency_ms=latency_ms,
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            created_at=int(now()),
        )
    )


def routed_requests(s: Session, owner: str, deployment: str) -> list[RoutedRequest]:
    return list(
        s.scalars(
            select(RoutedRequest)
            .where(RoutedRequest.owner == owner, RoutedRequest.deployment == deployment)
            .order_by(RoutedRequest.pk)
        )
    )


def stored_for(
    s: Session, owner: str, *, deployment: str | None = None, model: str | None = None
) -> list[StoredCompletion]:
    stmt = select(StoredCompletion).where(StoredCompletion.owner == owner)
    if deployment:
        stmt = stmt.where(StoredCompletion.deployment == deployment)
    if model:
        stmt = stmt.where(StoredCompletion.model == model)
    return list(s.scalars(stmt.order_by(StoredCompletion.pk)))


@dataclass
class Answer:
    """A stored completion's first answer with all feedback on it (what datasets from feedback are made of)."""

    id: str
    model: str
    prompt: list[dict[str, Any]]
    text: str
    feedback: list[Feedback]


def answers(
    s: Session, owner: str, *, deployment: str | None = None, model: str | None = None
) -> list[Answer]:
    rows = stored_for(s, owner, deployment=deployment, model=model)
    verdicts = feedback_for(s, owner, [r.id for r in rows])
    return [
        Answer(
            r.id,
            r.model,
            r.messages,
            (r.choices[0]["message"].get("content") or "") if r.choices else "",
            verdicts.get(r.id, []),
        )
        for r in rows
    ]


def stats_inputs(
    s: Session, owner: str, d: Deployment
) -> tuple[list[RoutedRequest], dict[str, list[Feedback]]]:
    """A deployment's routing log and the feedback on the answers it stored."""
    requests = routed_requests(s, owner, d.name)
    return requests, feedback_for(s, owner, sorted({r.completion_id for r in requests if r.completion_id}))
