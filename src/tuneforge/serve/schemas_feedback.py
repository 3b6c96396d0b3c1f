"""Bodies of the feedback loop's routes: stored completions (OpenAI's shapes), feedback, deployments and their
figures, datasets made from feedback (tuneforge's own objects, in the same style)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StringConstraints

from tuneforge.serve.schemas import ChatCompletion, Metadata, Request, Response, checked_number

MAX_CORRECTION_CHARS = 32_000
MAX_COMMENT_CHARS = 4_000
DEPLOYMENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_ARMS = 8

Score = checked_number(True, ge=1, le=5)
Weight = checked_number(False, ge=0, le=1_000_000)


# ------------------------------------------------------------------------------------------ completions
class StoredCompletionOut(ChatCompletion):
    request_model: str = Field(description="tuneforge: what the request named (a model or a deployment).")
    deployment: str | None = Field(None, description="tuneforge: the deployment that routed it.")
    shadow_of: str | None = Field(None, description="tuneforge: the completion this shadow answer shadowed.")
    user: str | None = None


class StoredCompletionList(Response):
    object: Literal["list"] = "list"
    data: list[StoredCompletionOut]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class StoredMessage(Response):
    id: str
    role: str
    content: str | None
    name: str | None = None


class StoredMessageList(Response):
    object: Literal["list"] = "list"
    data: list[StoredMessage]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class CompletionUpdate(Request):
    metadata: Metadata | None


class CompletionDeleted(Response):
    id: str
    object: Literal["chat.completion.deleted"] = "chat.completion.deleted"
    deleted: bool


# --------------------------------------------------------------------------------------------- feedback
class FeedbackIn(Request):
    """At least one of thumbs, score, correction, comment (checked by the route: a 400 naming them)."""

    user: Annotated[str, StringConstraints(max_length=256)] = Field(
        "", description="Who rates (one verdict per user and completion: sending again replaces it)."
    )
    thumbs: Literal["up", "down"] | None = None
    score: Score | None = Field(None, description="1 (bad) to 5 (good).")
    correction: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CORRECTION_CHARS)] | None = (
        Field(
            None, description=f"The answer it should have been (at most {MAX_CORRECTION_CHARS:,} characters)."
        )
    )
    comment: Annotated[str, StringConstraints(max_length=MAX_COMMENT_CHARS)] | None = None


class FeedbackOut(Response):
    object: Literal["chat.completion.feedback"] = "chat.completion.feedback"
    completion_id: str
    user: str
    thumbs: str | None
    score: int | None
    correction: str | None
    comment: str | None
    created_at: int
    updated_at: int


class FeedbackList(Response):
    object: Literal["list"] = "list"
    data: list[FeedbackOut]


# ------------------------------------------------------------------------------------------ deployments
class Arm(Request):
    model: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    weight: Weight = Field(1.0, description="Relative share of the traffic (0: none for now).")


class DeploymentIn(Request):
    name: Annotated[str, StringConstraints(pattern=DEPLOYMENT_NAME)] = Field(
        description="The alias clients send as `model` (letters, digits, . _ -; at most 64 characters)."
    )
    arms: list[Arm] = Field(min_length=1, max_length=MAX_ARMS)
    shadow: str | None = Field(
        None, description="A model that answers every request too; its answer is only stored."
    )
    store: StrictBool = Field(False, description="Store every answer the deployment routes (for feedback).")


class DeploymentUpdate(Request):
    arms: list[Arm] | None = Field(None, min_length=1, max_length=MAX_ARMS)
    shadow: str | None = Field(None, description='A model id, or "" to stop shadowing.')
    store: StrictBool | None = None


class Promote(Request):
    model: Annotated[str, StringConstraints(min_length=1, max_length=255)]


class DeploymentOut(Response):
    object: Literal["deployment"] = "deployment"
    name: str
    arms: list[dict[str, Any]]
    shadow: str | None
    store: bool
    history: list[dict[str, Any]]
    created_at: int
    updated_at: int


class DeploymentList(Response):
    object: Literal["list"] = "list"
    data: list[DeploymentOut]


class DeploymentDeleted(Response):
    name: str
    object: Literal["deployment.deleted"] = "deployment.deleted"
    deleted: bool


class ArmFiguresOut(Response):
    model: str
    weight: float
    shadow: bool
    requests: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    ratings: int
    thumbs_up: int
    thumbs_down: int
    up_rate: float | None
    up_rate_ci95: tuple[float, float]
    scores: int
    mean_score: float | None


class ArmComparisonOut(Response):
    model: str
    control: str
    difference: float | None
    z: float
    p_value: float
    verdict: str


class DeploymentStats(Response):
    object: Literal["deployment.stats"] = "deployment.stats"
    name: str
    test: str = Field(description="How arms are compared.")
    arms: list[ArmFiguresOut]
    comparisons: list[ArmComparisonOut]


# -------------------------------------------------------------------------------------------- datasets
class DatasetsIn(Request):
    deployment: str | None = Field(None, description="Only completions this deployment routed.")
    model: str | None = Field(None, description="Only completions this model answered.")


class DatasetsOut(Response):
    object: Literal["feedback.datasets"] = "feedback.datasets"
    files: dict[str, str] = Field(
        description="kto / dpo / sft → the id of the file written (purpose fine-tune)."
    )
    counts: dict[str, Any]
