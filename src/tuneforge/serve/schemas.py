"""Request and response bodies, in OpenAI's shapes (separate classes for what comes in and what goes out).

Requests refuse unknown fields, as OpenAI's API does, except where tuneforge documents an extension:
fine-tuning hyperparameters (lora_rank, max_steps ...) and the job's `training_type` (`lora`, `full`, or any method
of `tuneforge methods`). `method.type` is `supervised`, `dpo` (preference pairs), `kto` (answers rated up or
down, tuneforge) or `reinforcement` (GRPO with the grader as built-in rewards); the last three need an adapter
method.
Exports (`/v1/models/{model}/exports`, `/v1/exports`) are tuneforge's own objects, in the same style.

Every number a request carries is finite, of its documented kind (true is not 1, "1e-3" is not a number: OpenAI
refuses both) and within documented bounds; a refusal states the rule (`must be "auto" or a whole number from 1 to
50, not -1`). Unbounded values reached the database, the tokenizer or torch and failed there as 500s.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from tuneforge.export import FORMATS

Auto = Literal["auto"]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# ---------------------------------------------------------------------------------------- checked values
def shown(value: Any, limit: int = 40) -> str:
    """A value as the client wrote it in JSON (true, "1e-3", Infinity), cut short: messages quote what was sent
    without echoing a megabyte back."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bound(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def number_rule(
    whole: bool,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> str:
    """The rule of a bounded number in words: "a whole number from 1 to 50", "a number above 0 and at most 2"."""
    kind = "a whole number" if whole else "a number"
    if ge is not None and le is not None:
        return f"{kind} from {_bound(ge)} to {_bound(le)}"
    parts = [f"at least {_bound(ge)}" if ge is not None else f"above {_bound(gt)}" if gt is not None else ""]
    parts.append(
        f"at most {_bound(le)}" if le is not None else f"below {_bound(lt)}" if lt is not None else ""
    )
    return " ".join([kind, " and ".join(p for p in parts if p)]).strip()


def checked_number(
    whole: bool,
    *,
    auto: bool = False,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    message: str | None = None,
) -> Any:
    """A number field (optionally also "auto") checked before pydantic's own validation, so that one message
    states the whole rule — not pydantic's union of "Input should be 'auto'" and a bound — and so that what
    pydantic's lax mode would coerce is refused: a boolean, a numeric string, a fraction for a whole number,
    Infinity and NaN (Python's JSON parser reads 1e309 as infinity). The inner type keeps the bounds for the
    OpenAPI document. `message` replaces "must be <the rule>" where the rule needs its own words."""
    rule = ('"auto" or ' if auto else "") + number_rule(whole, ge=ge, gt=gt, le=le, lt=lt)
    message = message or f"must be {rule}"

    def check(v: Any) -> Any:
        if auto and v == "auto":
            return v
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        if ok and isinstance(v, float):
            ok = math.isfinite(v) and (v.is_integer() or not whole)
        if ok:  # exact comparisons: a huge int is compared as an int, never rounded to a float
            ok = (
                (ge is None or v >= ge)
                and (gt is None or v > gt)
                and (le is None or v <= le)
                and (lt is None or v < lt)
            )
        if not ok:
            hint = " (send the number itself, not a string)" if isinstance(v, str) and _numeric(v) else ""
            raise ValueError(f"{message}, not {shown(v)}{hint}")
        return v

    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    inner: Any = (
        Annotated[int, Field(**bounds)] if whole else Annotated[float, Field(allow_inf_nan=False, **bounds)]
    )
    return Annotated[Auto | inner if auto else inner, BeforeValidator(check)]


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def checked_strings(
    what: str, *, max_chars: int, max_items: int, min_chars: int = 1, min_items: int = 1
) -> Any:
    """A string or a list of strings, each of min_chars..max_chars characters, min_items..max_items of them —
    one message with the rule instead of a union's alternatives ("Input should be a valid string")."""
    one = Annotated[str, StringConstraints(min_length=min_chars, max_length=max_chars)]
    many = Annotated[list[one], Field(min_length=min_items, max_length=max_items)]
    count = f"up to {max_items}" if min_items == 0 else f"{min_items} to {max_items}"
    chars = f"at most {max_chars:,}" if min_chars == 0 else f"{min_chars} to {max_chars:,}"
    rule = f"a string or a list of {count} strings, each of {chars} characters"

    def check(v: Any) -> Any:
        items = [v] if isinstance(v, str) else v
        ok = (
            isinstance(items, list)
            and (min_items <= len(items) <= max_items or isinstance(v, str))
            and all(isinstance(x, str) and min_chars <= len(x) <= max_chars for x in items)
        )
        if not ok:
            raise ValueError(f"{what} must be {rule}, not {shown(v)}")
        return v

    return Annotated[one | many, BeforeValidator(check)]


# OpenAI's limits on metadata: 16 pairs, keys of at most 64 characters, string values of at most 512.
METADATA_KEYS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512


def _check_metadata(v: Any) -> Any:
    if v is None:
        return v
    if not isinstance(v, dict):
        raise ValueError(f"metadata must be an object of string keys and string values, not {shown(v)}")
    if len(v) > METADATA_KEYS:
        raise ValueError(f"metadata holds at most {METADATA_KEYS} key-value pairs, not {len(v)}")
    for key, value in v.items():
        if len(key) > METADATA_KEY_CHARS:
            raise ValueError(
                f"metadata keys are at most {METADATA_KEY_CHARS} characters; {shown(key)} has {len(key):,}"
            )
        if not isinstance(value, str):
            raise ValueError(f"metadata values are strings; {shown(key)} holds {shown(value)}")
        if len(value) > METADATA_VALUE_CHARS:
            raise ValueError(
                f"metadata values are at most {METADATA_VALUE_CHARS} characters; the value of {shown(key)} has "
                f"{len(value):,}"
            )
    return v


Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(max_length=METADATA_KEY_CHARS)],
        Annotated[str, StringConstraints(max_length=METADATA_VALUE_CHARS)],
    ],
    Field(max_length=METADATA_KEYS),
    BeforeValidator(_check_metadata),
]

# Bounds of counts in steps and tokens: far above any run this server can do, low enough that a typo (1e30) is
# refused at once rather than overflowing an integer column or a tensor size later.
MAX_STEPS = 1_000_000
MAX_TRAIN_LENGTH = 131_072  # tokens per training example: the longest context of common open models
MAX_GENERATED_TOKENS = 2**31 - 1  # a 32-bit count; the model's context window is the real limit

# The bounds OpenAI's API documents: a fine-tuning seed is a 31-bit number, a sampling seed a signed 64-bit one
# (what torch.Generator.manual_seed accepts; above it, "Overflow when unpacking long long" was a 500).
JobSeed = checked_number(True, ge=0, le=2**31 - 1)
SamplingSeed = checked_number(True, ge=-(2**63), le=2**63 - 1)
Epochs = checked_number(True, auto=True, ge=1, le=50)
BatchSize = checked_number(True, auto=True, ge=1, le=256)
RateMultiplier = checked_number(False, auto=True, gt=0, le=100)
SplitShare = checked_number(
    False,
    auto=True,
    ge=0,
    le=0.5,
    message='validation_split must be "auto" or a fraction from 0 to 0.5 (0: no validation split)',
)
TestShare = checked_number(
    False, ge=0, le=0.5, message="test_split must be a fraction from 0 to 0.5 (0: no test split, no report)"
)
Beta = checked_number(False, auto=True, gt=0, le=2)
LoraRank = checked_number(True, ge=1, le=512)
LoraAlpha = checked_number(False, gt=0, le=4096)
Fraction = checked_number(False, ge=0, lt=1)
WeightDecay = checked_number(False, ge=0, le=1)
Steps = checked_number(True, ge=1, le=MAX_STEPS)
TrainLength = checked_number(True, ge=8, le=MAX_TRAIN_LENGTH)
TargetModules = checked_strings("lora_target_modules", max_chars=256, max_items=64)
Temperature = checked_number(False, ge=0, le=2)
TopP = checked_number(False, gt=0, le=1)
Choices = checked_number(True, ge=1, le=128)  # OpenAI's bound; the server's max_n is usually lower
TopLogprobs = checked_number(True, ge=0, le=20)  # OpenAI's bounds (chat)
CompletionLogprobCount = checked_number(True, ge=0, le=5)  # OpenAI's bounds (legacy completions)
GeneratedTokens = checked_number(True, ge=1, le=MAX_GENERATED_TOKENS)


# ------------------------------------------------------------------------------------------------- files
FilePurpose = Literal[
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "fine-tune",
    "fine-tune-results",
    "vision",
    "user_data",
    "evals",
]


class FileObject(Response):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class FileList(Response):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(Response):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


# ------------------------------------------------------------------------------------ fine-tuning: input
class HyperparametersIn(Request):
    """OpenAI's three hyperparameters, each a number or "auto", plus tuneforge's extensions (all optional)."""

    n_epochs: Epochs = Field(
        "auto",
        description='Passes over the training file, a whole number from 1 to 50. "auto": chosen by tuneforge '
        "from the training split's size (enough optimizer steps for a small file, not pointlessly many for a "
        "large one; early stopping on the validation split does the rest); the job reports the number once "
        "training starts.",
    )
    batch_size: BatchSize = Field(
        "auto",
        description='Examples per optimizer step, 1 to 256. "auto": 8 below 2,000 examples, 16 below 20,000, '
        "else 32.",
    )
    learning_rate_multiplier: RateMultiplier = Field(
        "auto",
        description="Scales the server's base learning rate (2e-4 for LoRA, 2e-5 for full); above 0, at most "
        '100. "auto": tuneforge picks the learning rate for the method, the model\'s width and the batch size '
        "(refined by a short range test where that costs little); the job reports it as a multiplier once "
        "training starts.",
    )
    validation_split: SplitShare = Field(
        "auto",
        description="tuneforge: share of the training file held out for validation (loss curve, early "
        'stopping, best checkpoint) when the job has no validation_file, from 0 to 0.5. "auto": 10%, at least '
        "5 and at most 1,000 records; 0: none. Seeded by the job's seed, stratified where the answers are a few "
        "classes; the held-out records are a result file of the job (validation_split.jsonl).",
    )
    test_split: TestShare | None = Field(
        None,
        description="tuneforge: share of the training file held out as a test split, from 0 to 0.5 (default: "
        "none). After training, the base and the tuned model answer its questions and the job's before/after "
        "report (GET /v1/fine_tuning/jobs/{id}/report: metrics, per-field figures, confusion matrices, sample "
        "answers, forgetting) is written before the job succeeds; it costs two generations per test record.",
    )
    lora_rank: LoraRank | None = Field(None, description="tuneforge: LoRA rank r, 1 to 512 (default 16).")
    lora_alpha: LoraAlpha | None = Field(
        None, description="tuneforge: LoRA alpha, above 0 and at most 4,096 (default 32)."
    )
    lora_dropout: Fraction | None = Field(
        None, description="tuneforge: LoRA dropout, at least 0 and below 1 (default 0)."
    )
    lora_target_modules: TargetModules | None = Field(
        None,
        description="tuneforge: layers LoRA adapts: all-linear (default), a module name or pattern, or a list "
        "of up to 64 module names (each at most 256 characters).",
    )
    max_steps: Steps | None = Field(
        None, description=f"tuneforge: stop after this many optimizer steps (1 to {MAX_STEPS:,})."
    )
    warmup_ratio: Fraction | None = Field(
        None, description="tuneforge: linear warm-up fraction, at least 0 and below 1."
    )
    weight_decay: WeightDecay | None = Field(None, description="tuneforge: decoupled weight decay, 0 to 1.")
    eval_every: Steps | None = Field(
        None, description=f"tuneforge: validate every N optimizer steps (1 to {MAX_STEPS:,})."
    )
    save_every: Steps | None = Field(
        None, description=f"tuneforge: checkpoint every N optimizer steps (1 to {MAX_STEPS:,})."
    )
    max_length: TrainLength | None = Field(
        None,
        description=f"tuneforge: longest example in tokens, 8 to {MAX_TRAIN_LENGTH:,} (default: the server's "
        "max_length).",
    )

    def openai_part(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}

    def extensions(self) -> dict[str, Any]:
        return self.model_dump(
            exclude={"n_epochs", "batch_size", "learning_rate_multiplier"}, exclude_none=True
        )


class DpoHyperparametersIn(HyperparametersIn):
    """OpenAI's DPO hyperparameters: the supervised ones plus beta."""

    beta: Beta = Field(
        "auto",
        description="Strength of the pull towards the base model (higher stays closer), above 0 and at most 2. "
        '"auto": 0.1.',
    )

    def openai_part(self) -> dict[str, Any]:
        return {**super().openai_part(), "beta": self.beta}

    def extensions(self) -> dict[str, Any]:
        return {k: v for k, v in super().extensions().items() if k != "beta"}


KtoWeight = checked_number(False, gt=0, le=100)


class KtoHyperparametersIn(DpoHyperparametersIn):
    """KTO's: DPO's plus the weights of the desirable and undesirable answers' losses (tuneforge)."""

    desirable_weight: KtoWeight = Field(
        1.0,
        description="Weight of the loss on answers rated up. Keep desirable_weight x n_up / (undesirable_weight "
        "x n_down) between 1 and 4/3 (the KTO paper's advice; the job's events warn when it is far off).",
    )
    undesirable_weight: KtoWeight = Field(1.0, description="Weight of the loss on answers rated down.")

    def openai_part(self) -> dict[str, Any]:
        return {
            **super().openai_part(),
            "desirable_weight": self.desirable_weight,
            "undesirable_weight": self.undesirable_weight,
        }

    def extensions(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in super().extensions().items()
            if k not in ("desirable_weight", "undesirable_weight")
        }


GrpoBeta = checked_number(False, auto=True, ge=0, le=2)
Generations = checked_number(True, ge=2, le=64)
AnswerTokens = checked_number(True, ge=1, le=4096)
SamplingTemperature = checked_number(False, gt=0, le=2)
ClipRange = checked_number(False, gt=0, le=1)


class ReinforcementHyperparametersIn(HyperparametersIn):
    """OpenAI's reinforcement hyperparameters that apply here (n_epochs, batch_size, learning_rate_multiplier,
    eval_interval) and tuneforge's GRPO settings (train/grpo.py)."""

    eval_interval: Steps | None = Field(
        None, description=f"Validate (mean reward on the validation split) every N steps, 1 to {MAX_STEPS:,}."
    )
    num_generations: Generations = Field(
        4,
        description="tuneforge: answers sampled per prompt, 2 to 64; their scores are compared in the group.",
    )
    max_new_tokens: AnswerTokens = Field(
        64, description="tuneforge: longest sampled answer in tokens, 1 to 4,096."
    )
    temperature: SamplingTemperature = Field(
        1.0, description="tuneforge: sampling temperature, above 0 and at most 2."
    )
    beta: GrpoBeta = Field(
        "auto", description='tuneforge: weight of the KL term to the base, 0 to 2 (0: none). "auto": 0.04.'
    )
    epsilon: ClipRange = Field(
        0.2, description="tuneforge: clipping range of the policy ratio, above 0 and at most 1."
    )

    def openai_part(self) -> dict[str, Any]:
        out = super().openai_part()
        return out | ({"eval_interval": self.eval_interval} if self.eval_interval is not None else {})

    def extensions(self) -> dict[str, Any]:
        return {k: v for k, v in super().extensions().items() if k != "eval_interval"}


class SupervisedIn(Request):
    hyperparameters: HyperparametersIn | None = None


class DpoIn(Request):
    hyperparameters: DpoHyperparametersIn | None = None


class KtoIn(Request):
    hyperparameters: KtoHyperparametersIn | None = None


class ReinforcementIn(Request):
    grader: dict[str, Any] = Field(
        description="What scores a sampled answer: string_check (eq), multi (a weighted sum), or tuneforge's "
        "json_valid, exact_match, field_match, regex, length_penalty (jobs/graders.py says what maps)."
    )
    hyperparameters: ReinforcementHyperparametersIn | None = None
    response_format: dict[str, Any] | None = Field(
        None, description="Accepted for compatibility; must be empty."
    )

    @field_validator("response_format")
    @classmethod
    def _no_response_format(cls, v: dict | None) -> dict | None:
        if v:
            raise ValueError(
                "response_format is not supported by tuneforge; ask for the format in the prompt"
            )
        return v


class MethodIn(Request):
    type: Literal["supervised", "dpo", "kto", "reinforcement"]
    supervised: SupervisedIn | None = None
    dpo: DpoIn | None = None
    kto: KtoIn | None = Field(None, description="tuneforge: answers rated up or down, no pairs needed.")
    reinforcement: ReinforcementIn | None = Field(
        None, description="GRPO (train/grpo.py) with the grader mapped to built-in rewards."
    )


def training_types() -> list[str]:
    """The methods a job can train with: every registered LM method (the enum of `training_type`)."""
    from tuneforge.methods import registry  # on use: the registry imports every method module

    return [s.name for s in registry.available() if s.recipe == "lm"]


class JobCreate(Request):
    model: str = Field(..., description="A base model id from GET /v1/models (owned_by tuneforge).")
    training_file: str = Field(..., description="Id of an uploaded file with purpose fine-tune.")
    validation_file: str | None = Field(None, description="Id of an uploaded file for validation metrics.")
    suffix: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Up to 64 characters added to the fine-tuned model's name.",
    )
    seed: JobSeed | None = Field(
        None, description="Seed, 0 to 2,147,483,647 (as on OpenAI); one is drawn if not given."
    )
    method: MethodIn | None = Field(
        None, description='{"type": "supervised", "supervised": {"hyperparameters": ...}}'
    )
    hyperparameters: HyperparametersIn | None = Field(
        None, description="Deprecated by OpenAI in favour of method."
    )
    metadata: Metadata | None = Field(
        None,
        description=f"Up to {METADATA_KEYS} key-value pairs of strings: keys of at most {METADATA_KEY_CHARS} "
        f"characters, values of at most {METADATA_VALUE_CHARS} (OpenAI's limits).",
    )
    integrations: list[dict[str, Any]] | None = Field(
        None, description="Accepted for compatibility; must be empty."
    )
    training_type: str = Field(
        "lora",
        json_schema_extra=lambda schema: schema.update(enum=training_types()),
        description="tuneforge: the fine-tuning method — `lora` adapters (default; one base copy serves them "
        "all), `full` weights, or another method of `tuneforge methods` (dora, rslora, ia3, prefix, "
        "prompt_tuning, adaption_prompt, freeze, unfreeze; qlora on a GPU).",
    )

    @field_validator("training_type")
    @classmethod
    def _known_method(cls, v: str) -> str:
        names = training_types()
        if v not in names:
            raise ValueError(f"unknown training_type {v!r}; use one of {', '.join(names)}")
        return v

    @field_validator("integrations")
    @classmethod
    def _no_integrations(cls, v: list | None) -> list | None:
        if v:
            raise ValueError("integrations (Weights & Biases ...) are not supported by tuneforge")
        return v


# ----------------------------------------------------------------------------------- fine-tuning: output
class JobErrorOut(Response):
    code: str
    message: str
    param: str | None = None


class HyperparametersOut(Response):
    """As requested, with "auto" replaced by the value once known: batch_size when the files are validated,
    n_epochs and learning_rate_multiplier when training sets up (a fractional epoch count stays a fraction)."""

    n_epochs: Auto | int | float
    batch_size: Auto | int
    learning_rate_multiplier: Auto | float


class DpoHyperparametersOut(HyperparametersOut):
    beta: Auto | float


class SupervisedOut(Response):
    hyperparameters: HyperparametersOut


class DpoOut(Response):
    hyperparameters: DpoHyperparametersOut


class KtoHyperparametersOut(DpoHyperparametersOut):
    desirable_weight: float
    undesirable_weight: float


class KtoOut(Response):
    hyperparameters: KtoHyperparametersOut


class ReinforcementHyperparametersOut(HyperparametersOut):
    eval_interval: int | None = None


class ReinforcementOut(Response):
    grader: dict[str, Any]
    hyperparameters: ReinforcementHyperparametersOut


class MethodOut(Response):
    type: Literal["supervised", "dpo", "kto", "reinforcement"] = "supervised"
    supervised: SupervisedOut | None = None
    dpo: DpoOut | None = None
    kto: KtoOut | None = None
    reinforcement: ReinforcementOut | None = None


class JobOut(Response):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobErrorOut | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    # pydantic's smart union takes the member that sets the most fields, the earlier one on a tie: a supervised
    # job's values stay HyperparametersOut (no eval_interval: null), a reinforcement job's with eval_interval not
    hyperparameters: (
        KtoHyperparametersOut | DpoHyperparametersOut | HyperparametersOut | ReinforcementHyperparametersOut
    )
    method: MethodOut
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None
    # tuneforge extensions
    training_type: str
    hyperparameter_extensions: dict[str, Any] = Field(default_factory=dict)
    step: int = 0
    total_steps: int | None = None
    attempts: int = 0
    failures: list[str] = Field(
        default_factory=list, description="Why earlier attempts ended (lost worker, crash)."
    )


class EstimateOut(Response):
    """tuneforge: what `tuneforge estimate` predicts for a job, before it is created."""

    peak_bytes: int = Field(description="Predicted peak memory of training.")
    available_bytes: int | None = Field(None, description="Memory the device has free now.")
    device: str
    fits: bool = Field(description="Whether the peak fits in the available memory.")
    parts: dict[str, int] = Field(
        description="The peak's parts: weights in use, optimizer state, activations ..."
    )
    suggestions: list[str] = Field(description="What would make it fit, when it does not.")
    total_steps: int
    steps_per_epoch: int
    tokens_per_epoch: int | None = None
    seconds_per_epoch: float | None = Field(None, description="Timed on a few micro-batches (timing=true).")
    seconds_total: float | None = None


class JobList(Response):
    object: Literal["list"] = "list"
    data: list[JobOut]
    has_more: bool


class EventOut(Response):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class EventList(Response):
    object: Literal["list"] = "list"
    data: list[EventOut]
    has_more: bool


class CheckpointMetrics(Response):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class CheckpointOut(Response):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class CheckpointList(Response):
    object: Literal["list"] = "list"
    data: list[CheckpointOut]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


# ------------------------------------------------------------------------------------------------ models
class ModelOut(Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str | None = Field(
        None, description="tuneforge: the base model a fine-tuned model was trained from."
    )


class ModelList(Response):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class ModelDeleted(Response):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


# ------------------------------------------------------------------------------------------------ exports
ExportFormat = Literal[FORMATS]  # type: ignore[valid-type]


class ExportCreate(Request):
    format: ExportFormat = Field(
        ...,
        description="merged: a Hugging Face folder (transformers, vLLM, TGI), the adapter folded in; gguf: one "
        ".gguf file for llama.cpp / LM Studio; gguf-lora: the adapter as a GGUF LoRA beside its base's GGUF; "
        "ollama: a GGUF and a Modelfile (`ollama create NAME -f Modelfile`). Downloaded as the .gguf file "
        "(gguf) or as a tar of the folder (the others).",
    )
    quant: str | None = Field(
        None,
        max_length=16,
        description="GGUF type: f32, f16 (default for gguf and gguf-lora), bf16, q8_0 (default for ollama); "
        "q4_k_m, q5_k_m, q6_k ... where the server has llama-cpp-python. Not for merged.",
    )


class ExportErrorOut(Response):
    code: str
    message: str


class ExportOut(Response):
    id: str
    object: Literal["export"] = "export"
    created_at: int
    finished_at: int | None = None
    model: str = Field(description="The fine-tuned model exported.")
    format: ExportFormat
    quant: str | None = Field(None, description="The GGUF type written (the format's default if none asked).")
    status: Literal["queued", "running", "succeeded", "failed"] = Field(
        description="succeeded: the files are written (see verification_status for the check's verdict)."
    )
    verification_status: Literal["passed", "failed", "unverified"] | None = Field(
        None,
        description="Once succeeded: whether the export, run as its users run it (transformers for merged, "
        "llama.cpp for the GGUF formats), answered the check's prompts like the tuned model; unverified: not "
        "checked (see verification.skipped).",
    )
    verification: dict[str, Any] | None = Field(
        None,
        description="The check: prompts, tokenization_identical, answers_equal, answers_stopped, min_match, "
        "reasons (why it failed), differences (the first differing token of each differing answer).",
    )
    files: dict[str, str] = Field(
        default_factory=dict, description="The export's files by role (model, gguf, base, lora, modelfile)."
    )
    bytes: int | None = Field(None, description="Size of the export's files.")
    error: ExportErrorOut | None = None
    attempts: int = 0


class ExportList(Response):
    object: Literal["list"] = "list"
    data: list[ExportOut]
    has_more: bool


class ExportDeleted(Response):
    id: str
    object: Literal["export"] = "export"
    deleted: bool


# ------------------------------------------------------------------------------------------- generation
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = False


class TextPart(Request):
    type: Literal["text"]
    text: str


def _check_content(v: Any) -> Any:
    # one message for the shape, instead of the alternatives of a union (string, list of parts); OpenAI refuses
    # an empty list of parts too
    if v is None or isinstance(v, str) or (isinstance(v, list) and v):
        return v
    raise ValueError(
        'content must be a string or a non-empty list of text parts ([{"type": "text", "text": "..."}]), '
        f"not {shown(v)}"
    )


Content = Annotated[
    str | Annotated[list[TextPart], Field(min_length=1)] | None, BeforeValidator(_check_content)
]


class ChatMessageIn(Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content = Field(
        None,
        validate_default=True,
        description="A string or a list of text parts. Optional only for an assistant message with tool_calls.",
    )
    name: str | None = None
    tool_call_id: str | None = Field(
        None,
        validate_default=True,
        description="The id of the assistant's tool call a tool message answers (required for role tool).",
    )
    tool_calls: list[dict[str, Any]] | None = None

    # Field validators, not a model validator, so that the error names the missing field (messages.2.content);
    # validate_default makes them run when the field is absent. `role` is validated first (field order).
    @field_validator("content")
    @classmethod
    def _content_required(cls, v: Any, info: ValidationInfo) -> Any:
        role = info.data.get("role")
        if v is None and role not in (None, "assistant"):  # assistant: content or tool_calls (checked on use)
            raise ValueError(f"a {role} message needs content (a string or a list of text parts)")
        return v

    @field_validator("tool_call_id")
    @classmethod
    def _tool_call_id_required(cls, v: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("role") == "tool" and not v:
            raise ValueError(
                "a tool message needs tool_call_id: the id of the assistant's tool call it answers"
            )
        return v

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


Stop = checked_strings("stop", max_chars=1000, max_items=4, min_chars=0, min_items=0)


def _check_prompt(v: Any) -> Any:
    if isinstance(v, str) or (isinstance(v, list) and all(isinstance(p, str) for p in v)):
        return v
    raise ValueError(f"prompt must be a string or a list of strings, not {shown(v)}")


Prompt = Annotated[str | list[str], BeforeValidator(_check_prompt)]


class SamplingIn(Request):
    model: str
    temperature: Temperature = Field(1.0, description="0 to 2; 0: greedy decoding.")
    top_p: TopP = Field(1.0, description="Nucleus sampling: above 0, at most 1.")
    n: Choices = Field(1, description="Choices to generate, 1 to 128 (and at most the server's max_n).")
    stop: Stop | None = Field(
        None, description="Up to 4 strings (each at most 1,000 characters) that end the completion."
    )
    seed: SamplingSeed | None = Field(
        None,
        description="Same seed, same request → same sampled answer. A signed 64-bit integer, as on OpenAI.",
    )
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def logprob_count(self) -> int | None:
        """How many most likely tokens to report beside each chosen one; None: no logprobs asked."""
        return None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(SamplingIn):
    messages: list[ChatMessageIn] = Field(..., min_length=1)
    logprobs: StrictBool = Field(False, description="Return the log-probability of each generated token.")
    top_logprobs: TopLogprobs | None = Field(
        None,
        description="0 to 20: the most likely tokens at each position, with their log-probabilities "
        "(needs logprobs: true).",
    )

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    store: StrictBool = Field(
        False,
        description="Keep the request and the answer (per tenant) for GET /v1/chat/completions, feedback and "
        "datasets made from it. Nothing is kept otherwise, unless the model is a deployment that stores.",
    )
    metadata: Metadata | None = Field(
        None, description="Up to 16 string pairs kept with a stored completion (filter the list by them)."
    )
    max_tokens: GeneratedTokens | None = Field(
        None, description="Deprecated by OpenAI; max_completion_tokens wins. At least 1."
    )
    max_completion_tokens: GeneratedTokens | None = Field(
        None, description="At least 1; the prompt and the completion fit in the model's context."
    )


class CompletionRequest(SamplingIn):
    prompt: Prompt = Field(..., description="One prompt, or several (each gets n choices).")
    max_tokens: GeneratedTokens | None = Field(16, description="At least 1 (default 16).")
    echo: StrictBool = False
    logprobs: CompletionLogprobCount | None = Field(
        None, description="0 to 5: each generated token's log-probability and that many most likely tokens."
    )

    def logprob_count(self) -> int | None:
        return self.logprobs


class Usage(Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class TopLogprob(Response):
    token: str
    logprob: float
    bytes: list[int] | None = Field(description="The token's UTF-8 bytes.")


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Response):
    content: list[TokenLogprobOut] | None
    refusal: list[TokenLogprobOut] | None = None


class CompletionLogprobs(Response):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class ChatChoice(Response):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    metadata: dict[str, str] | None = Field(None, description="A stored completion's metadata.")


class ChunkDelta(Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(Response):
    index: int
    delta: ChunkDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionChoice(Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Completion(Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# ------------------------------------------------------------------------------------------------ health
class Liveness(Response):
    status: Literal["ok"] = Field(description="The process answers (nothing more is checked).")


class Readiness(Response):
    """What the server can do now, as the calling tenant may see it: the server's own state (database, workers,
    generation slots) and the tenant's own jobs and models — never another tenant's."""

    status: Literal["ok", "degraded"] = Field(description="degraded: the database does not answer (503).")
    database: str = Field(description='"ok", or the kind of error the database gave.')
    workers: int = Field(description="Worker processes that renewed their heartbeat within lease_s.")
    queued_jobs: int = Field(description="Your jobs validating their files or waiting for a worker.")
    running_jobs: int = Field(description="Your jobs being trained.")
    models_loaded: dict[str, list[str]] = Field(
        description="Models in memory: each base model (shared by every tenant) → your adapters loaded on it, "
        "and your full fine-tuned models (full:<id> → [])."
    )
    generations_running: int = Field(
        description="The server's generation slots in use (every tenant's: the capacity left to you)."
    )
    generations_waiting: int = Field(description="Admitted generations waiting for a slot (every tenant's).")


# ------------------------------------------------------------------------------------------------ errors
class ErrorDetail(Response):
    message: str = Field(description="What is wrong and what to do about it.")
    type: str = Field(description="invalid_request_error, rate_limit_error, server_error ...")
    param: str | None = Field(description="The request field at fault (dotted path), if one is.")
    code: str | None = Field(description="A stable code: invalid_value, missing_required_parameter, ...")


class ErrorResponse(Response):
    """Every error, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    error: ErrorDetail
