"""The schema of a run: one YAML file of sections, each a pydantic model whose fields document themselves
(`tuneforge train --help-config` prints them) and check their own values; unknown keys are refused.

This module imports nothing of tuneforge but its errors, so reading a config is cheap (no torch, no methods).
Each method's options are validated against the method's own config class, and the rules that span sections
(method x objective x data x stages) are checked, by recipes/build.py, which is also where YAML files and
`--set` overrides are turned into a `RunConfig`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    field_validator,
    model_validator,
)

from tuneforge.errors import ConfigError

DEFAULT_MODEL = (
    "smollm2-135m"  # the bundled model (models/registry.py) that runs use unless they name another
)
DEFAULT_METHOD = "lora"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# --------------------------------------------------------------------------------------------------- data
class CleanConfig(Section):
    normalize_whitespace: bool = Field(
        True, description="Normalise Unicode (NFC), strip control characters, collapse runs of spaces."
    )
    missing: Literal["fill", "drop"] = Field(
        "fill",
        description="Records with a missing optional field (alpaca `input`, a system prompt): `fill` uses an "
        "empty string, `drop` rejects the record. Records missing a required field are always rejected.",
    )
    dedupe: Literal["none", "exact", "near"] = Field(
        "near", description="Remove exact duplicates (`exact`), or exact and near duplicates (`near`)."
    )
    near_threshold: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Jaccard similarity (MinHash estimate) above which two records are near duplicates.",
    )
    min_tokens: int = Field(0, ge=0, description="Reject records with fewer tokens than this.")
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Reject records with more tokens than this (before the truncation policy applies).",
    )


class SplitConfig(Section):
    validation: float = Field(0.1, ge=0, lt=1, description="Fraction of records held out for validation.")
    test: float = Field(
        0.1, ge=0, lt=1, description="Fraction of records held out for the before/after test."
    )
    min_validation: int = Field(
        0, ge=0, description="Hold out at least this many records for validation when `validation` > 0."
    )
    max_validation: int | None = Field(
        None, ge=1, description="Hold out at most this many records for validation (null: no cap)."
    )
    stratify: Literal["auto", "none", "label", "answer"] = Field(
        "auto",
        description="Keep class proportions equal across splits: `label` for classification data, `answer` for "
        "data whose answers are few distinct values, `auto` picks one of these when it applies.",
    )

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.validation + self.test >= 1:
            raise ValueError(
                "split.validation + split.test must be below 1 (something must be left to train on)"
            )
        return self


class TaskConfig(Section):
    """One task of a multi-task run (`data.mix`)."""

    name: str = Field(..., min_length=1, description="Task name: reports show metrics per task under it.")
    train: str = Field(..., description="The task's data file; validation and test are split off it.")
    weight: float = Field(
        1.0,
        gt=0,
        description="Share of the training stream (normalised over the tasks; up- or down-samples).",
    )


class DataConfig(Section):
    train: str | None = Field(
        None, description="Training data file (JSONL, JSON, CSV, Parquet or XML); or use `mix`."
    )
    mix: list[TaskConfig] = Field(
        default_factory=list,
        description="Multi-task: several files mixed by weight into one run, e.g. [{name: qa, train: qa.jsonl, "
        "weight: 0.7}, {name: tickets, train: t.jsonl, weight: 0.3}]; each split is kept per task.",
    )
    validation: str | None = Field(None, description="Separate validation file; if unset, split off `train`.")
    test: str | None = Field(None, description="Separate test file; if unset, split off `train`.")
    format: Literal[
        "auto",
        "chat",
        "alpaca",
        "sharegpt",
        "prompt_completion",
        "text",
        "classification",
        "preference",
    ] = Field("auto", description="Record format; `auto` detects it from the fields of the records.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map our field names to yours, e.g. {text: review, label: sentiment} or "
        "{prompt: question, completion: answer}.",
    )
    system_prompt: str | None = Field(
        None, description="System prompt added to every conversation that has none."
    )
    classification_prompt: str = Field(
        "{text}\n\nAnswer with one of: {labels}.",
        description="How a classification record is asked as a chat turn ({text}, {labels}).",
    )
    clean: CleanConfig = Field(default_factory=CleanConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    max_length: int = Field(1024, ge=8, description="Maximum tokens per training example.")
    truncation: Literal["raise", "drop", "truncate"] = Field(
        "drop",
        description="Examples longer than `max_length`: `raise` stops, `drop` rejects them, `truncate` cuts "
        "them (only if some answer tokens remain). Counts are reported before training.",
    )
    train_on: Literal["assistant", "all", "last"] = Field(
        "assistant",
        description="Which tokens carry loss: every assistant turn (default), all tokens, or only the last "
        "assistant turn. Per-message `weight: 0` is honoured in every mode.",
    )
    min_examples: int = Field(10, ge=1, description="Fewest training examples accepted (OpenAI requires 10).")

    @model_validator(mode="after")
    def _train_or_mix(self) -> DataConfig:
        if not self.train and not self.mix:
            raise ValueError("`data.train` is required (or `data.mix`, a list of tasks)")
        if self.train and self.mix:
            raise ValueError("give either data.train or data.mix, not both (add the file as one more task)")
        names = [t.name for t in self.mix]
        if len(set(names)) != len(names):
            raise ValueError(f"data.mix task names must differ: {names}")
        return self


# ------------------------------------------------------------------------------------------------- model
class ModelConfig(Section):
    name: str = Field(
        DEFAULT_MODEL,
        description="Base model: a registry alias (`tuneforge models`), a local directory, or a Hugging Face id.",
    )
    revision: str | None = Field(None, description="Hugging Face revision (branch, tag or commit).")
    adapter: str | None = Field(
        None,
        description="Continue training this trained adapter (a run folder, or a PEFT adapter folder) instead of a "
        "fresh one: the next version of a tuned model, e.g. on its users' feedback (`tuneforge feedback tune`). "
        "It keeps its own rank and target modules; the method must be an adapter method.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype on load. `auto`: float32 on CPU, bfloat16 on GPUs that support it."
    )
    chat_template: str | None = Field(
        None,
        description="Jinja chat template overriding the model's own (base models without one get ChatML).",
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="Attention kernel. `auto`: SDPA (no T x T score matrix kept for backward). `eager` trains "
        "about 10% faster on CPU for short sequences at the cost of that matrix.",
    )


# ---------------------------------------------------------------------------------------------- methods
class MethodConfig(Section):
    """Base of every fine-tuning method's config (methods/*.py). `name` selects the method in the registry."""

    name: str = Field(..., description="Fine-tuning method (`tuneforge methods` lists them).")


class MethodSection(MethodConfig):
    """The `method:` section as read, before recipes/build.py validates its options against the method's own
    config class (which needs the method registry, and with it torch)."""

    model_config = ConfigDict(extra="allow")


def method_section(value: Any) -> MethodConfig:
    """`method: lora`, `method: {name: lora, r: 8}` or a method's config object, as a MethodConfig."""
    if isinstance(value, MethodConfig):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ValueError("method must be a name or a mapping, e.g. `method: {name: lora, r: 16}`")
    return MethodSection(**{"name": DEFAULT_METHOD, **value})


# --------------------------------------------------------------------------------------------- objective
BUILTIN_REWARDS = ("json_valid", "json_schema", "exact_match", "field_match", "regex", "length_penalty")
REWARD_ARGS = {
    "json_schema": "a JSON Schema file",
    "field_match": "a list of field names",
    "regex": "a pattern",
}


class RewardConfig(Section):
    """One reward function of objective grpo and its weight (train/rewards.py). In YAML a reward is written as
    its name (`json_valid`, `exact_match`, `length_penalty`, or `module:function`) or as a one-key mapping with
    its argument (`field_match: [queue, priority]`, `json_schema: schema.json`, `regex: PATTERN`,
    `function: module:function`), plus an optional `weight`."""

    kind: str = Field(description=f"{', '.join(BUILTIN_REWARDS)}, or function (a Python `module:function`).")
    arg: Any = Field(
        None, description="The reward's argument (fields, schema file, pattern, module:function)."
    )
    weight: float = Field(1.0, description="Its weight in the total reward.")

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"kind": "function", "arg": v} if ":" in v else {"kind": v}
        if isinstance(v, dict) and "kind" not in v:
            named = [k for k in v if k != "weight"]
            if len(named) != 1:
                raise ValueError(
                    f"a reward is one name with its argument (and an optional weight), got keys {sorted(v)}"
                )
            return {"kind": named[0], "arg": v[named[0]], "weight": v.get("weight", 1.0)}
        return v

    @model_validator(mode="after")
    def _known(self) -> RewardConfig:
        if self.kind == "function":
            if not isinstance(self.arg, str) or ":" not in self.arg:
                raise ValueError(f"reward function must be given as module:function, got {self.arg!r}")
        elif self.kind not in BUILTIN_REWARDS:
            raise ValueError(
                f"unknown reward {self.kind!r}: use one of {', '.join(BUILTIN_REWARDS)}, or module:function"
            )
        elif self.kind in REWARD_ARGS and self.arg in (None, "", []):
            raise ValueError(f"reward {self.kind} needs {REWARD_ARGS[self.kind]}, e.g. {self.kind}: ...")
        return self


class ObjectiveConfig(Section):
    """What the loss rewards: supervised answers (sft), preferences between two answers (dpo, orpo), answers
    judged one at a time as desirable or not (kto), or a score that reward functions give sampled answers
    (grpo)."""

    name: Literal["sft", "dpo", "orpo", "kto", "grpo"] = Field(
        "sft",
        description="`sft`: cross-entropy on the answer tokens. `dpo` (Rafailov et al. 2023): prefer `chosen` "
        "over `rejected` relative to the base model (= the same weights with adapters off; needs an adapter "
        "method). `orpo` (Hong et al. 2024): SFT on `chosen` plus an odds-ratio penalty; no reference model. "
        "`kto` (Ethayarajh et al. 2024): answers labelled desirable or not (`label: true/false`), no pairs "
        "needed (a pair counts as one of each); relative to the base model like dpo (needs an adapter method). "
        "`grpo` (Shao et al. 2024): samples num_generations answers per prompt, scores them with `rewards`, and "
        "pushes the model towards the answers above their group's mean (train/grpo.py).",
    )
    beta: float = Field(
        0.1,
        ge=0,
        description="dpo, kto: strength of the pull towards the reference (higher stays closer). orpo: weight "
        "lambda of the odds-ratio term. grpo: weight of the KL term to the reference (the base with adapters "
        "off); 0.04 unless set, 0 switches the reference off.",
    )
    num_generations: int = Field(4, ge=2, description="grpo: answers sampled per prompt (one group).")
    max_new_tokens: int = Field(64, ge=1, description="grpo: longest sampled answer.")
    temperature: float = Field(1.0, gt=0, description="grpo: sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="grpo: nucleus sampling share.")
    epsilon: float = Field(
        0.2,
        gt=0,
        description="grpo: clip range of the probability ratio to the sampling policy (PPO's epsilon).",
    )
    rewards: list[RewardConfig] = Field(
        default_factory=list,
        description="grpo: reward functions with weights, e.g. [{field_match: [queue, priority]}, json_valid].",
    )
    desirable_weight: float = Field(
        1.0,
        gt=0,
        description="kto: weight of the loss on desirable answers. The KTO paper recommends desirable_weight x "
        "desirable answers / (undesirable_weight x undesirable answers) between 1 and 4/3; training warns when "
        "the data is well outside that, with the weights to set.",
    )
    undesirable_weight: float = Field(
        1.0, gt=0, description="kto: weight of the loss on undesirable answers (see desirable_weight)."
    )

    @model_validator(mode="after")
    def _kto_weights(self) -> ObjectiveConfig:
        if self.name != "kto" and (self.desirable_weight != 1 or self.undesirable_weight != 1):
            raise ValueError(
                f"objective.desirable_weight and undesirable_weight apply to objective kto, not {self.name}"
            )
        if self.name == "grpo":
            if not self.rewards:
                raise ValueError(
                    "objective grpo needs rewards: e.g. rewards: [{field_match: [queue, priority]}] or "
                    "[exact_match], or your own module:function"
                )
            if "beta" not in self.model_fields_set:
                object.__setattr__(self, "beta", 0.04)  # GRPO's own default (DeepSeekMath), not dpo's 0.1
        elif self.rewards:
            raise ValueError(f"objective.rewards apply to objective grpo, not {self.name}")
        elif self.beta == 0:
            raise ValueError(f"objective.beta must be above 0 for {self.name}")
        return self


# ------------------------------------------------------------------------------------------- forgetting
class ForgettingConfig(Section):
    """Mitigations of catastrophic forgetting (forgetting itself is measured by `eval.general`)."""

    replay: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Fraction of the training stream drawn from general data (`data`): 0.2 mixes one general "
        "example in for every four task examples.",
    )
    distill: float = Field(
        0.0,
        ge=0,
        description="Weight of a KL term pulling the model's next-token distribution on the answer tokens "
        "towards the base model's (the same weights with adapters off; needs an adapter method).",
    )
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of the distillation term.")
    ewc: float = Field(
        0.0,
        ge=0,
        description="EWC strength lambda: penalty lambda * sum(F * drift^2), with F the diagonal Fisher of the "
        "base model on `data` (normalised to mean 1). For adapters the drift is the weight delta they add.",
    )
    fisher_examples: int = Field(64, ge=1, description="General examples used to estimate the EWC Fisher.")
    guard: bool | Literal["auto", "watch"] = Field(
        "auto",
        description="The forgetting guard: score a few general examples at each validation (general_loss and "
        "general_ppl_rise in metrics.jsonl). `true` acts: a checkpoint whose general perplexity rose more than "
        "`max_general_rise` is not kept as the best, so early stopping ends a run that stays above it. `watch` "
        "only measures and warns. `auto`: `watch` for instruction-tuned bases (a chat template) with a "
        "language-model method, else off (acting's cost in task gain is not measured yet: bench/README.md).",
    )
    max_general_rise: float = Field(
        0.10, gt=0, description="The forgetting guard's limit: relative rise of general-data perplexity."
    )
    guard_examples: int = Field(
        16, ge=1, description="General examples the guard scores at each validation (from `data`)."
    )
    data: str = Field(
        "bundled",
        description="General data for replay and EWC: a file, or `bundled` (300 alpaca records, disjoint from "
        "the general evaluation set).",
    )


# ------------------------------------------------------------------------------------------------- train
class DistributedConfig(Section):
    """Training on several processes (`tuneforge train --nproc N` says the same on the command line)."""

    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: every rank a whole copy of the model, each optimizer step's examples shared out, "
        "gradients summed before the update. fsdp: the same updates with parameters, gradients and optimizer "
        "state sharded over the ranks (FSDP2; for a model that does not fit one device; LoRA shards the frozen "
        "base too). deepspeed is not built yet.",
    )
    num_processes: int = Field(
        1, ge=1, description="Ranks on this machine (torchrun); 1: one process, as without this section."
    )


class TrainConfig(Section):
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="Data-parallel training over several processes."
    )
    learning_rate: float | Literal["auto"] = Field(
        "auto",
        description="Peak learning rate. `auto`: chosen per run from the method, the model's width and the batch "
        "size, refined by a short learning-rate range test where that costs little (train/auto.py); the value "
        "and why are printed and stored under `resolved` in the run's config.yaml.",
    )
    lr_range_test: bool | Literal["auto"] = Field(
        "auto",
        description="With learning_rate `auto`: run a short range test (a few dozen steps at rising rates on a "
        "throw-away copy of the trainable weights). `auto`: only when it costs at most 5% of the run.",
    )
    epochs: float | Literal["auto"] = Field(
        "auto",
        description="Passes over the training split (fractions allowed). `auto`: from the dataset size, enough "
        "optimizer steps for small sets and not pointlessly many for large ones; early stopping does the rest.",
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    weight_decay: float = Field(
        0.0, ge=0, description="Decoupled weight decay (not applied to biases and norms)."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps for linear warm-up.")
    warmup_steps: int | None = Field(None, ge=0, description="Warm-up steps (overrides warmup_ratio).")
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule."
    )
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="Optimizer.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip gradients to this norm (null: no clipping)."
    )
    precision: Literal["auto", "fp32", "bf16-mixed", "fp16-mixed"] = Field(
        "auto",
        description="`auto` uses bf16 autocast where the CPU or GPU has fast bf16, else fp32.",
    )
    eval_every: int | None = Field(
        None,
        ge=1,
        description="Validate every N optimizer steps (default: 4 times per epoch, at most 20 times per run).",
    )
    early_stopping_patience: int | Literal["auto"] | None = Field(
        "auto",
        description="Stop when validation loss has not improved for this many evaluations. `auto`: 3 when "
        "there is a validation split; null: never stop early.",
    )
    save_every: int | None = Field(
        None, ge=1, description="Write a resumable checkpoint every N steps (default: at each validation)."
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="Most recent checkpoints kept (the best one is kept too)."
    )
    log_every: int = Field(1, ge=1, description="Write a metrics.jsonl line every N optimizer steps.")
    group_by_length: bool = Field(
        True, description="Batch examples of similar length together (less padding, same examples per epoch)."
    )
    micro_batch_tokens: int | Literal["auto"] | None = Field(
        "auto",
        description="Compute each batch in micro-batches of at most this many (padded) tokens: caps activation "
        "memory without changing the update. `auto`: 512 on CPU (smaller working sets also run faster there), "
        "whole batches on GPU; null: whole batches.",
    )
    memory_check: bool = Field(
        True, description="Refuse to start when the predicted peak memory exceeds what the machine has free."
    )
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile the decoder layers for the training step. `auto`: lora and rslora runs "
        "where a C++ compiler (CPU) or Triton (GPU) is present, when the first steps show that the rest of the "
        "run gains more than compiling costs (~1 min the first time on a machine, seconds once cached).",
    )
    packing: bool = Field(
        False,
        description="Pack several examples into each row of data.max_length tokens (block-diagonal attention: "
        "no example sees another); batch_size then counts rows.",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    num_threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: all cores).")


# -------------------------------------------------------------------------------------------------- eval
class EvalConfig(Section):
    max_new_tokens: int = Field(64, ge=1, description="Longest generated answer.")
    batch_size: int = Field(32, ge=1, description="Prompts generated at once.")
    max_examples: int | None = Field(None, ge=1, description="Evaluate on at most this many test examples.")
    few_shot: int = Field(
        3,
        ge=0,
        description="Also judge the base model with this many solved training examples in its prompt.",
    )
    samples: int = Field(5, ge=0, description="Sample answers shown side by side in the report.")
    temperature: float = Field(0.0, ge=0, description="0 means greedy decoding (reproducible).")
    metrics: list[str] = Field(
        default_factory=lambda: ["auto"],
        description="Task metrics: exact_match, accuracy, f1, bleu, rouge_l, chrf, json; `auto` picks by answers.",
    )
    general: str | None = Field(
        "bundled",
        description="General held-out set on which base and tuned loss are compared to measure forgetting: a "
        "chat file, `bundled` (120 alpaca records), or null to skip.",
    )


# ---------------------------------------------------------------------------------------------- tracking
class TrackingConfig(Section):
    backends: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list,
        description="Also log the run to these: `tensorboard` (<run_dir>/tensorboard), `mlflow` (see mlflow_uri).",
    )
    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking store (default: $MLFLOW_TRACKING_URI, else the local SQLite file "
        "mlflow.db beside the run folder).",
    )
    experiment: str = Field("tuneforge", description="MLflow experiment name.")
    run_name: str | None = Field(
        None, description="Name of the run in MLflow (default: the run folder's name)."
    )


# --------------------------------------------------------------------------------------------------- run
class RunConfig(Section):
    """One fine-tuning run."""

    run_dir: str = Field("runs/run", description="Folder that receives the adapter, metrics and reports.")
    seed: int = Field(0, description="Seed for splitting, shuffling, initialisation and dropout.")
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: SerializeAsAny[MethodConfig] = Field(
        default_factory=lambda: method_section({}), description="Fine-tuning method."
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig)
    stages: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Sequential fine-tuning: stages run in order, each a partial config (name, data, method, "
        "train, objective, forgetting, eval) over this one, each starting from the previous stage's result.",
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    resolved: dict[str, Any] = Field(
        default_factory=dict,
        description="Written by tuneforge, not by hand: what each `auto` setting of this run resolved to and why, "
        "e.g. {train.learning_rate: {value: 0.0014, why: ...}}. A resumed run reuses these values.",
    )

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, v: Any) -> MethodConfig:
        return method_section(v)

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    def fingerprint(self) -> str:
        """Hash of everything that changes what is trained (not where it is written, nor evaluation)."""
        d = self.model_dump(mode="json")
        d.pop("run_dir")
        d.pop("eval")
        d.pop("tracking", None)
        d.pop("resolved", None)  # auto values follow from the rest (and are reused on resume)
        d["train"].pop("distributed", None)  # how many ranks share the work does not change the updates
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- --set and YAML
def parse_value(raw: str) -> Any:
    """`--set` values are YAML scalars/flow collections: 3, 2e-4, true, null, [q_proj, v_proj], {a: 1}."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"--set {item!r} is not key=value", "write it as --set train.learning_rate=1e-4"
            )
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if isinstance(nxt, str) and p in ("method", "objective"):  # `method: lora` shorthand
                nxt = node[p] = {"name": nxt}
            if not isinstance(nxt, dict):
                raise ConfigError(
                    f"--set {key}: {p} is not a section", "check the key against `--help-config`"
                )
            node = nxt
        node[parts[-1]] = parse_value(raw)
    return data


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def describe(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for every field, for `--help-config` and the docs."""
    rows: list[tuple[str, str, str]] = []
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and name != "method":
            rows.extend(describe(ann, key + "."))
            continue
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        if name == "method":
            default = "lora"
        rows.append((key, default, f.description or ""))
    return rows


def with_absolute_paths(cfg: RunConfig) -> RunConfig:
    """The run's config naming local files absolutely, so that the run folder works from any directory later."""
    cfg = cfg.model_copy(deep=True)
    if Path(cfg.model.name).exists():
        cfg.model.name = str(Path(cfg.model.name).resolve())
    for key in ("train", "validation", "test"):
        value = getattr(cfg.data, key)
        if value and Path(value).exists():
            setattr(cfg.data, key, str(Path(value).resolve()))
    for task in cfg.data.mix:
        if Path(task.train).exists():
            task.train = str(Path(task.train).resolve())
    for section, key in ((cfg.forgetting, "data"), (cfg.eval, "general")):
        value = getattr(section, key)
        if value and value != "bundled" and Path(value).exists():
            setattr(section, key, str(Path(value).resolve()))
    return cfg
