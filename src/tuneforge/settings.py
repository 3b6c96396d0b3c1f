"""The service's settings: one pydantic-settings class, read from TUNEFORGE_* environment variables (or an env
file), overridable by `tuneforge serve` / `tuneforge worker` options.

    TUNEFORGE_DATA_DIR=/srv/tuneforge            files, run folders and the SQLite database
    DATABASE_URL=postgresql+psycopg://u:p@db/tf   metadata in PostgreSQL instead of SQLite (or TUNEFORGE_DATABASE_URL)
    TUNEFORGE_API_KEYS='sk-alice=alice,sk-bob=bob' keys and the tenant each belongs to (or a JSON object)
    TUNEFORGE_BASE_MODELS='{"smollm2-135m": "smollm2-135m", "qwen": "/models/qwen2.5-0.5b"}'

See examples/serve.env for every setting with its default.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tuneforge.config import DEFAULT_MODEL

OWNER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MODEL_ID_RE = re.compile(r"^[A-Za-z0-9._/-]{1,128}$")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tuneforge"


def _mapping(value: Any, what: str, example: str) -> Any:
    """A mapping given as JSON (`{"a": "b"}`) or as `a=b,c=d` (the form that is easy to write in a shell)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} is not valid JSON ({e.msg}); write it as {example}") from None
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"{what}: {item.strip()!r} is not key=value; write it as {example}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


class Settings(BaseSettings):
    """Everything the API server and the workers need to agree on."""

    model_config = SettingsConfigDict(
        env_prefix="TUNEFORGE_", extra="ignore", populate_by_name=True, validate_default=True
    )

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Uploaded files, run folders (runs/<job id>), exports (exports/<export id>) and the default "
        "SQLite database.",
    )
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("database_url", "TUNEFORGE_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL of the metadata database; default sqlite:///<data_dir>/tuneforge.db. "
        "PostgreSQL: postgresql+psycopg://user:password@host/dbname.",
    )
    # A request holds a connection only for its database work, never while it generates; the defaults still
    # exceed the default admission limit (2 running + 16 queued), so a burst of key checks never waits on them.
    db_pool_size: int = Field(
        20, ge=1, description="Database connections the API server keeps open for reuse."
    )
    db_max_overflow: int = Field(
        10, ge=0, description="Extra connections opened under a burst beyond db_pool_size (closed after use)."
    )
    db_pool_timeout_s: float = Field(
        10.0,
        gt=0,
        description="How long a request waits for a free database connection; then it is answered 429 with "
        "Retry-After.",
    )
    api_keys: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="API keys and their owner (the tenant): `key=owner,key2=owner2` or a JSON object. Keys are "
        "stored hashed. When none is configured anywhere, `tuneforge serve` creates one and prints it.",
    )
    base_models: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: {DEFAULT_MODEL: DEFAULT_MODEL},
        description="Base models offered for fine-tuning and inference: model id → what to load (a registry "
        "alias, a local folder, a .gguf file or a Hugging Face id).",
    )
    # ---- uploads
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1, description="Largest accepted upload.")
    # A JSON body is read whole into memory and a prompt is tokenised before it can be refused as too long.
    # 1 MiB holds the longest prompt of a 128K-token model (about 0.5 MB of English, 0.4 MB of CJK in UTF-8)
    # with room for JSON escapes; the 8 MB prompt of issue 15 is refused before it is read.
    max_json_bytes: int = Field(
        1024 * 1024, ge=1, description="Largest accepted JSON request body (every route but file uploads)."
    )
    # ---- inference
    engine: Literal["batched", "serial", "vllm"] = Field(
        "batched",
        description="batched: continuous batching across requests and LoRA adapters (Llama-family models; "
        "others, and DoRA/IA3/prompt adapters, fall back to serial); serial: one generation at a time per model; "
        "vllm: a vLLM server per base model underneath, LoRA adapters hot-loaded into it (install vLLM in an "
        "environment of its own and set vllm_command).",
    )
    vllm_command: str = Field(
        "vllm serve",
        description="vLLM engine: the command that starts vLLM's OpenAI server, given `--model` and options "
        "after it: `/opt/vllm-env/bin/vllm serve`, or `.venv-vllm/bin/python -m vllm.entrypoints.openai.api_server` "
        "(the CPU build of `make vllm`, whose `vllm` command fails on its own package name).",
    )
    vllm_args: str = Field(
        "",
        description="vLLM engine: more options for `vllm serve`, e.g. `--tensor-parallel-size 2 "
        "--gpu-memory-utilization 0.85 --max-model-len 8192` (they win over tuneforge's own).",
    )
    vllm_max_lora_rank: int = Field(64, ge=1, description="vLLM engine: the largest LoRA rank it accepts.")
    vllm_max_loras: int = Field(8, ge=1, description="vLLM engine: different LoRA adapters in one batch.")
    vllm_start_timeout_s: float = Field(
        900, gt=0, description="vLLM engine: how long a vLLM server may take to start (load, warm up)."
    )
    vllm_read_timeout_s: float = Field(
        600, gt=0, description="vLLM engine: the longest wait for vLLM's next token before the request fails."
    )
    max_concurrent_generations: int = Field(
        32, ge=1, description="Requests generating at once (serial engine: they take turns on one model)."
    )
    max_queued_generations: int = Field(
        64, ge=0, description="Requests allowed to wait beyond those; beyond that: 429 with Retry-After."
    )
    max_batch_size: int = Field(32, ge=1, description="Batched engine: sequences decoded together per model.")
    prefill_chunk_tokens: int = Field(
        256,
        ge=1,
        description="Batched engine: prompt tokens fed per step, so long prompts do not stall decoding.",
    )
    kv_cache_mb: float = Field(
        1024, gt=0, description="Batched engine: memory for the KV caches of one model's running sequences."
    )
    metrics_token: str | None = Field(
        None,
        description="If set, GET /metrics needs `Authorization: Bearer <metrics_token>` (else it is open).",
    )
    max_loaded_adapters: int = Field(
        32,
        ge=1,
        description="Batched engine: LoRA adapters kept in memory per base model (least recently used out).",
    )
    retry_after_s: int = Field(2, ge=1, description="Retry-After seconds sent with a 429.")
    default_max_tokens: int = Field(
        512, ge=1, description="Completion length when a request sets no max_tokens (capped by the context)."
    )
    max_n: int = Field(8, ge=1, description="Largest `n` (choices per request).")
    max_loaded_models: int = Field(
        2, ge=1, description="Base models (and fully fine-tuned models) kept in memory at once."
    )
    device: str | None = Field(
        None, description="Torch device for inference and training (default: cuda if any)."
    )
    # ---- jobs and workers
    executor: Literal["local", "ray"] = Field(
        "local",
        description="Where a worker trains the jobs it leases: local (in its own process) or ray (as a task on "
        "the Ray cluster at ray_address, with ray_cpus_per_job / ray_gpus_per_job; pip install 'tuneforge[ray]').",
    )
    ray_address: str | None = Field(
        None,
        description='The Ray cluster (e.g. "127.0.0.1:6379", "ray://head:10001"); none: start a local one.',
    )
    ray_cpus_per_job: float = Field(1.0, gt=0, description="CPUs a job's Ray task asks for.")
    ray_gpus_per_job: float = Field(0.0, ge=0, description="GPUs a job's Ray task asks for (0: none needed).")
    workers: int = Field(
        1, ge=0, description="Worker processes `tuneforge serve` starts (0: run them yourself)."
    )
    heartbeat_s: float = Field(5.0, gt=0, description="How often a worker renews the lease of its job.")
    lease_s: float = Field(
        60.0,
        gt=0,
        description="A job whose lease was not renewed for this long is taken up by another worker.",
    )
    poll_s: float = Field(1.0, gt=0, description="How often an idle worker looks for queued jobs.")
    control_poll_s: float = Field(
        1.0, gt=0, description="How often a training job checks for pause and cancel requests."
    )
    max_attempts: int = Field(
        3, ge=1, description="Attempts per job (a crash or a lost worker uses one) before it fails."
    )
    min_examples: int = Field(10, ge=1, description="Fewest training examples a job accepts (OpenAI: 10).")
    lora_learning_rate: float = Field(
        2e-4,
        gt=0,
        description="Learning rate of adapter jobs at learning_rate_multiplier 1 (`auto` lets the run choose).",
    )
    full_learning_rate: float = Field(
        2e-5, gt=0, description="Learning rate of full fine-tuning jobs at learning_rate_multiplier 1."
    )
    max_length: int = Field(
        1024, ge=8, description="Longest training example in tokens (longer ones fail the job)."
    )
    # ---- exports
    export_verify_prompts: int = Field(
        20,
        ge=0,
        description="Prompts an export is checked on (its answers against the tuned model's); 0: not checked.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, v: Any) -> Any:
        v = _mapping(v, "TUNEFORGE_API_KEYS", "sk-key1=alice,sk-key2=bob")
        for key, owner in (v or {}).items():
            if len(str(key)) < 8:
                raise ValueError("API keys must be at least 8 characters long")
            if not OWNER_RE.match(str(owner)):
                raise ValueError(f"owner {owner!r}: use 1-64 letters, digits, '-' or '_'")
        return v

    @field_validator("base_models", mode="before")
    @classmethod
    def _bases(cls, v: Any) -> Any:
        v = _mapping(v, "TUNEFORGE_BASE_MODELS", '{"smollm2-135m": "smollm2-135m"}')
        for model_id in v or {}:
            if not MODEL_ID_RE.match(model_id) or model_id.startswith("ft:"):
                raise ValueError(f"base model id {model_id!r}: use letters, digits, '.', '-', '_' or '/'")
        return v

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'tuneforge.db'}"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.files_dir, self.runs_dir, self.exports_dir):
            d.mkdir(parents=True, exist_ok=True)


def load_settings(env_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment (and an env file), with explicit values on top; one-line errors."""
    from pydantic import ValidationError

    from tuneforge.errors import ConfigError

    if env_file is not None and not Path(env_file).is_file():
        raise ConfigError(f"env file {env_file} does not exist", "check the path (see examples/serve.env)")
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(_env_file=env_file, **given)  # type: ignore[call-arg]
    except ValidationError as e:
        first = e.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "settings"
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(
            f"setting {name}: {msg}", f"fix TUNEFORGE_{name.upper()} (see examples/serve.env)"
        ) from None


def child_env(settings: Settings) -> dict[str, str]:
    """Environment variables that give a child process (a worker) the same settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump(mode="json", exclude={"api_keys"}).items():
        if value is None:
            continue
        env[f"TUNEFORGE_{name.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
    return env
