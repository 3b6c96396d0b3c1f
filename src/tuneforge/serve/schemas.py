"""Request and response bodies, in OpenAI's shapes (separate classes for what comes in and what goes out).

Requests refuse unknown fields, as OpenAI's API does, except where tuneforge documents an extension:
fine-tuning hyperparameters (lora_rank, max_steps ...) and the job's `training_type` (`lora`, `full`, or any method
of `tuneforge methods`). `method.type` is `supervised` or `dpo` (preference pairs; needs an adapter method).
Exports (`/v1/models/{model}/exports`, `/v1/exports`) are tuneforge's own objects, in the same style.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuneforge.export import FORMATS

Auto = Literal["auto"]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Response(BaseModel):
    model_config = ConfigDict(from_attributes=True)


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

    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = Field(
        "auto",
        description='Passes over the training file. "auto": chosen by tuneforge from the training split\'s size '
        "(enough optimizer steps for a small file, not pointlessly many for a large one; early stopping on the "
        "validation split does the rest); the job reports the number once training starts.",
    )
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = Field(
        "auto",
        description='Examples per optimizer step. "auto": 8 below 2,000 examples, 16 below 20,000, else 32.',
    )
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] = Field(
        "auto",
        description='Scales the server\'s base learning rate (2e-4 for LoRA, 2e-5 for full). "auto": tuneforge '
        "picks the learning rate for the method, the model's width and the batch size (refined by a short "
        "range test where that costs little); the job reports it as a multiplier once training starts.",
    )
    validation_split: Auto | Annotated[float, Field(ge=0, le=0.5)] = Field(
        "auto",
        description="tuneforge: share of the training file held out for validation (loss curve, early "
        'stopping, best checkpoint) when the job has no validation_file. "auto": 10%, at least 5 and at most '
        "1,000 records; 0: none. Seeded by the job's seed, stratified where the answers are a few classes; the "
        "held-out records are a result file of the job (validation_split.jsonl).",
    )
    lora_rank: int | None = Field(None, ge=1, le=512, description="tuneforge: LoRA rank r (default 16).")
    lora_alpha: float | None = Field(None, gt=0, description="tuneforge: LoRA alpha (default 32).")
    lora_dropout: float | None = Field(None, ge=0, lt=1, description="tuneforge: LoRA dropout (default 0).")
    lora_target_modules: str | list[str] | None = Field(
        None, description="tuneforge: layers LoRA adapts: all-linear (default) or module names."
    )
    max_steps: int | None = Field(None, ge=1, description="tuneforge: stop after this many optimizer steps.")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="tuneforge: linear warm-up fraction.")
    weight_decay: float | None = Field(None, ge=0, description="tuneforge: decoupled weight decay.")
    eval_every: int | None = Field(None, ge=1, description="tuneforge: validate every N steps.")
    save_every: int | None = Field(None, ge=1, description="tuneforge: checkpoint every N steps.")
    max_length: int | None = Field(None, ge=8, description="tuneforge: longest example in tokens.")

    @field_validator("validation_split", mode="before")
    @classmethod
    def _split_share(cls, v: Any) -> Any:
        ok = v == "auto" or (isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 0.5)
        if not ok:
            raise ValueError(
                f'validation_split must be "auto" or a fraction from 0 to 0.5 (0: no validation split), not {v!r}'
            )
        return v

    def openai_part(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}

    def extensions(self) -> dict[str, Any]:
        return self.model_dump(
            exclude={"n_epochs", "batch_size", "learning_rate_multiplier"}, exclude_none=True
        )


class DpoHyperparametersIn(HyperparametersIn):
    """OpenAI's DPO hyperparameters: the supervised ones plus beta."""

    beta: Auto | Annotated[float, Field(gt=0, le=2)] = Field(
        "auto",
        description='Strength of the pull towards the base model (higher stays closer). "auto": 0.1.',
    )

    def openai_part(self) -> dict[str, Any]:
        return {**super().openai_part(), "beta": self.beta}

    def extensions(self) -> dict[str, Any]:
        return {k: v for k, v in super().extensions().items() if k != "beta"}


class SupervisedIn(Request):
    hyperparameters: HyperparametersIn | None = None


class DpoIn(Request):
    hyperparameters: DpoHyperparametersIn | None = None


class MethodIn(Request):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedIn | None = None
    dpo: DpoIn | None = None
    reinforcement: dict[str, Any] | None = None


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
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Seed; one is drawn if not given.")
    method: MethodIn | None = Field(
        None, description='{"type": "supervised", "supervised": {"hyperparameters": ...}}'
    )
    hyperparameters: HyperparametersIn | None = Field(
        None, description="Deprecated by OpenAI in favour of method."
    )
    metadata: dict[str, str] | None = Field(None, max_length=16)
    integrations: list[dict[str, Any]] | None = Field(
        None, description="Accepted for compatibility; must be empty."
    )
    training_type: str = Field(
        "lora",
        description="tuneforge: the fine-tuning method — `lora` adapters (default; one base copy serves them "
        "all), `full` weights, or another method of `tuneforge methods` (dora, rslora, ia3, prefix, "
        "prompt_tuning, adaption_prompt, freeze, unfreeze; qlora on a GPU).",
    )

    @field_validator("training_type")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from tuneforge.methods import registry

        names = [s.name for s in registry.available() if s.recipe == "lm"]
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


class MethodOut(Response):
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: SupervisedOut | None = None
    dpo: DpoOut | None = None


class JobOut(Response):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobErrorOut | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: DpoHyperparametersOut | HyperparametersOut
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
    include_usage: bool = False


class TextPart(Request):
    type: Literal["text"]
    text: str


class ChatMessageIn(Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


Stop = str | Annotated[list[str], Field(max_length=4)] | None


class SamplingIn(Request):
    model: str
    temperature: float = Field(1.0, ge=0, le=2, description="0: greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, description="Choices to generate (at most the server's max_n).")
    stop: Stop = Field(None, description="Up to 4 strings that end the completion.")
    seed: int | None = Field(None, description="Same seed, same request → same sampled answer.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(SamplingIn):
    messages: list[ChatMessageIn] = Field(..., min_length=1)
    max_tokens: int | None = Field(
        None, ge=1, description="Deprecated by OpenAI; max_completion_tokens wins."
    )
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(SamplingIn):
    prompt: str | list[str] = Field(..., description="One prompt, or several (each gets n choices).")
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False


class Usage(Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatChoice(Response):
    index: int
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChunkDelta(Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(Response):
    index: int
    delta: ChunkDelta
    logprobs: None = None
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
    logprobs: None = None
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
class Health(Response):
    status: Literal["ok", "degraded"]
    database: str
    workers: int = Field(description="Workers that renewed their heartbeat within lease_s.")
    queued_jobs: int
    running_jobs: int
    models_loaded: dict[str, list[str]] = Field(
        description="Base models in memory → adapters loaded on them."
    )
    generations_running: int
    generations_waiting: int
