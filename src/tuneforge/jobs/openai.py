"""The OpenAI translation of a job, one place for each: the model and checkpoint ids, the names of the training
metrics (job events, checkpoint metrics, the results CSV), the hyperparameters' "auto" policy with the base
learning rate, the validation split a job without a validation file gets, and the job's tuneforge run config.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.data.schema import Example
from tuneforge.jobs.graders import rewards_from_grader
from tuneforge.methods import registry
from tuneforge.recipes.build import build_config
from tuneforge.settings import Settings

# ------------------------------------------------------------------------------------------------ model ids


def fine_tuned_model_id(base: str, owner: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's naming: ft:{base}:{owner}:{suffix}:{id} (suffix may be empty)."""
    return f"ft:{base}:{owner}:{suffix or ''}:{job_id.removeprefix('ftjob-')}"


def checkpoint_model_id(fine_tuned_model: str, step: int) -> str:
    """A checkpoint's `fine_tuned_model_checkpoint`: the job's model id and the checkpoint's step."""
    return f"{fine_tuned_model}:ckpt-step-{step}"


# -------------------------------------------------------------------------------------------- metric names

# The subset a checkpoint's `metrics` carry (OpenAI's checkpoint objects have no rates or perplexity).
CHECKPOINT_METRICS = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)
# The results CSV's columns, by the metric each is taken from (OpenAI's CSV says train_accuracy).
CSV_COLUMNS = {
    "step": "step",
    "train_loss": "train_loss",
    "train_mean_token_accuracy": "train_accuracy",
    "valid_loss": "valid_loss",
    "valid_mean_token_accuracy": "valid_mean_token_accuracy",
}


def metrics(row: dict[str, Any], train: dict[str, Any] | None = None) -> dict[str, Any]:
    """One tuneforge metrics row (metrics.jsonl) under OpenAI's names, as a metrics event's `data` holds it.

    A training row (loss, token_accuracy, lr, tokens_per_s, epoch) gives train_* names, a validation row
    (val_loss, val_token_accuracy, val_ppl) valid_* ones; preference rows add their reward accuracy and margin.
    `train`, for a validation row, is the training row of the same step: OpenAI's validation events carry the
    step's training loss too.
    """
    out: dict[str, Any] = {"step": int(row["step"])}
    if "val_loss" in row:
        out.update(
            valid_loss=row["val_loss"],
            valid_mean_token_accuracy=row.get("val_token_accuracy"),
            # OpenAI's full_* values cover the whole validation file; tuneforge always validates on all of it
            full_valid_loss=row["val_loss"],
            full_valid_mean_token_accuracy=row.get("val_token_accuracy"),
            valid_perplexity=row.get("val_ppl"),
        )
        if train is not None:
            named = metrics(train)
            out.update(
                train_loss=named["train_loss"], train_mean_token_accuracy=named["train_mean_token_accuracy"]
            )
        source, name = "val_{}", "valid_{}"
    else:
        out.update(
            train_loss=row["loss"],
            train_mean_token_accuracy=row.get("token_accuracy"),
            epoch=row.get("epoch"),
            learning_rate=row.get("lr"),
            tokens_per_second=row.get("tokens_per_s"),
        )
        source, name = "{}", "train_{}"
    for key in ("reward_accuracy", "reward_margin"):  # dpo: how often and by how much chosen wins
        if (value := row.get(source.format(key))) is not None:
            out[name.format(key)] = value
    if (value := row.get(source.format("reward"))) is not None:  # grpo: the answers' mean total reward
        out[name.format("reward_mean")] = value  # OpenAI's reinforcement metric names
    return out


def checkpoint_metrics(step: int, last_train: dict[str, Any], last_val: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's `metrics`: its step, and the latest training and validation rows at or before it."""
    out: dict[str, Any] = {"step": step}
    for row in (last_train, last_val):
        if row and row.get("step", 0) <= step:
            named = metrics(row)
            out.update({k: named[k] for k in CHECKPOINT_METRICS if k in named})
    return out


def results_csv(rows: Iterable[dict[str, Any]]) -> bytes:
    """A run's metrics rows as OpenAI's results file: one line per step (step, train_loss, train_accuracy,
    valid_loss, valid_mean_token_accuracy), empty where the step has no such value."""
    lines: dict[int, dict[str, Any]] = {}
    for r in rows:
        line = lines.setdefault(int(r["step"]), {"step": int(r["step"])})
        if "loss" in r or "val_loss" in r:
            named = metrics(r)
            line.update({col: named[k] for k, col in CSV_COLUMNS.items() if k in named})
    cols = list(CSV_COLUMNS.values())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for step in sorted(lines):
        w.writerow({c: lines[step].get(c, "") for c in cols})
    return buf.getvalue().encode()


# --------------------------------------------------------------------------------------- hyperparameters

DEFAULT_BETA = 0.1
# validation_split "auto": 10% of the training file, at least enough records for a loss that is not noise, at
# most what a validation pass can afford every few steps.
AUTO_VALIDATION_FRACTION = 0.1
MIN_AUTO_VALIDATION = 5
MAX_AUTO_VALIDATION = 1000
HELD_OUT_FILENAME = "validation_split.jsonl"
# what the library's set-up resolves ("resolved" in its message event) → the job hyperparameter it reports
RESOLVED_KEYS = {"train.epochs": "n_epochs", "train.learning_rate": "learning_rate_multiplier"}

# tuneforge's extension hyperparameters → where they go in the run config
EXTRA_KEYS = {
    "lora_rank": "method.r",
    "lora_alpha": "method.alpha",
    "lora_dropout": "method.dropout",
    "lora_target_modules": "method.target_modules",
    "max_steps": "train.max_steps",
    "warmup_ratio": "train.warmup_ratio",
    "weight_decay": "train.weight_decay",
    "eval_every": "train.eval_every",
    "save_every": "train.save_every",
    "max_length": "data.max_length",
}


# reinforcement jobs' tuneforge hyperparameters that go to objective grpo as they are (beta has its "auto")
GRPO_KEYS = ("num_generations", "max_new_tokens", "temperature", "epsilon")


def auto_batch_size(n_train: int) -> int:
    """8 below 2,000 training examples, 16 below 20,000, else 32."""
    return 8 if n_train < 2_000 else 16 if n_train < 20_000 else 32


def _is_auto(value: Any) -> bool:
    return value in (None, "auto")


def resolve(hp: dict[str, Any], n_train: int) -> dict[str, Any]:
    """The job's hyperparameters as far as the service decides them, once the training file has been read (the
    rules are documented in the README): an "auto" batch_size from the file's size, an "auto" beta 0.1.

    "auto" n_epochs and learning_rate_multiplier stay "auto": the run config passes train.epochs / learning_rate
    "auto" and the library picks them during set-up (from the training split, the method, the model and the
    batch size); the job's event sink then records the numbers it chose (`reported`)."""
    n_epochs, batch, lrm = (hp.get(k, "auto") for k in ("n_epochs", "batch_size", "learning_rate_multiplier"))
    out = {
        "n_epochs": "auto" if _is_auto(n_epochs) else int(n_epochs),
        "batch_size": auto_batch_size(n_train) if _is_auto(batch) else int(batch),
        "learning_rate_multiplier": "auto" if _is_auto(lrm) else float(lrm),
    }
    if "beta" in hp:  # DPO and KTO jobs
        out["beta"] = DEFAULT_BETA if _is_auto(hp["beta"]) else float(hp["beta"])
    for key in ("desirable_weight", "undesirable_weight"):  # KTO jobs
        if key in hp:
            out[key] = float(hp[key])
    if hp.get("eval_interval") is not None:  # reinforcement jobs
        out["eval_interval"] = int(hp["eval_interval"])
    return out


def reported(resolved: dict[str, Any], base_learning_rate: float) -> dict[str, tuple[int | float, str]]:
    """The library's resolved settings as job hyperparameters, each with the library's reason: train.epochs →
    n_epochs, train.learning_rate → learning_rate_multiplier (the rate over the job's base learning rate, to
    3 significant digits). Other resolved settings are not hyperparameters of a job."""
    out: dict[str, tuple[int | float, str]] = {}
    for key, name in RESOLVED_KEYS.items():
        entry = resolved.get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("value"), int | float):
            continue
        value = float(entry["value"])
        if name == "n_epochs":  # OpenAI's n_epochs is a whole number; a fraction is shown as it is
            number: int | float = int(value) if value.is_integer() else round(value, 2)
        else:
            number = float(f"{value / base_learning_rate:.3g}")
        out[name] = (number, str(entry.get("why") or ""))
    return out


def base_learning_rate(training_type: str, settings: Settings) -> float:
    """The learning rate a multiplier of 1 means: the server's `lora_learning_rate` (2e-4) for the adapter
    methods, `full_learning_rate` (2e-5) for the others (full fine-tuning moves every weight)."""
    if registry.get(training_type).artifact == "adapter":
        return settings.lora_learning_rate
    return settings.full_learning_rate


def validation_split(value: Any, has_validation_file: bool, test: float | None = None) -> dict[str, Any]:
    """The run's data.split for a job. With a validation file nothing is held out for validation;
    `validation_split` 0 turns the split off; "auto" (the default) holds out 10% of the training file, at least 5
    and at most 1,000 records; a number is that fraction. Seeded by the job's seed (the run's), stratified by
    label or answer where the data has classes (split.stratify auto). A test split only where the job asks for
    one (`test_split`, for its before/after report): otherwise the user's records are for training and
    validation."""
    none = {"validation": 0.0, "test": float(test or 0.0)}
    if has_validation_file or value == 0:
        return none
    if _is_auto(value):
        return {
            **none,
            "validation": AUTO_VALIDATION_FRACTION,
            "min_validation": MIN_AUTO_VALIDATION,
            "max_validation": MAX_AUTO_VALIDATION,
            "stratify": "auto",
        }
    return {**none, "validation": float(value), "stratify": "auto"}


def held_out_records(train_file: Path, held_out: Sequence[Example]) -> bytes:
    """The held-out validation records as JSONL, as the user sent them (their lines of the training file), so
    the file can be uploaded again as a job's validation_file. Records without a JSONL line of their own (a
    JSON document) are written as tuneforge normalised them."""
    lines = train_file.read_text(encoding="utf-8-sig").split("\n")  # "\n" only, as the JSONL reader splits
    out = []
    for ex in held_out:
        line = ex.source.line if ex.source else None
        text = lines[line - 1].rstrip("\r") if line and line <= len(lines) else ""
        out.append(text if _is_object(text) else json.dumps(ex.to_dict(), ensure_ascii=False))
    return "".join(f"{x}\n" for x in out).encode()


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


# -------------------------------------------------------------------------------------------- run config


def job_run_config(settings: Settings, **fields: Any) -> RunConfig:
    """`run_config` with what the server's settings decide: the method's base learning rate and the longest
    example (the job's `max_length`, else the server's). The worker and the estimate route build it alike."""
    longest = fields["extras"].get("max_length") or settings.max_length
    return run_config(
        **fields,
        base_learning_rate=base_learning_rate(fields["training_type"], settings),
        max_length=int(longest),
    )


def run_config(
    *,
    run_dir: Path,
    base_source: str,
    train_path: Path,
    validation_path: Path | None,
    training_type: str,
    method_type: str = "supervised",
    resolved: dict[str, Any],
    extras: dict[str, Any],
    seed: int,
    base_learning_rate: float,
    max_length: int,
    requested: dict[str, Any] | None = None,
    grader: dict[str, Any] | None = None,
) -> RunConfig:
    """The run config of a job: a test split only where the job asks for one (`test_split`), validation from the
    validation file or else a split of the training file (`validation_split`), records kept
    as given (no de-duplication: the job trains on what was sent). The method keeps its own defaults (LoRA: r 16,
    alpha 32, all linear layers) unless the extras set them.

    n_epochs and learning_rate_multiplier that were requested as "auto" (`requested`: the job's hyperparameters
    as sent; default `resolved`) reach the library as train.epochs / train.learning_rate "auto" — also on a later
    attempt, after the job's reported values became numbers, so that a resumed run has the config it started
    with. Explicit values mean integer epochs and multiplier × `base_learning_rate`."""
    asked = resolved if requested is None else requested
    cfg: dict[str, Any] = {
        "run_dir": str(run_dir),
        "seed": seed,
        "model": {"name": base_source},
        "data": {
            "train": str(train_path),
            "validation": str(validation_path) if validation_path else None,
            "split": validation_split(
                extras.get("validation_split"), validation_path is not None, extras.get("test_split")
            ),
            "clean": {"dedupe": "none"},
            "max_length": max_length,
            "truncation": "raise",
            "min_examples": 1,
        },
        "method": {"name": training_type},  # any registered LM method (`tuneforge methods`)
        "train": {
            "epochs": "auto" if _is_auto(asked.get("n_epochs")) else int(resolved["n_epochs"]),
            "batch_size": resolved["batch_size"],
            "learning_rate": "auto"
            if _is_auto(asked.get("learning_rate_multiplier"))
            else base_learning_rate * float(resolved["learning_rate_multiplier"]),
        },
    }
    if method_type == "dpo":  # preference pairs; the reference is the base (the adapter switched off)
        cfg["data"]["format"] = "preference"
        cfg["objective"] = {"name": "dpo", "beta": resolved.get("beta", DEFAULT_BETA)}
    elif method_type == "kto":  # answers rated up or down (pairs are split into one of each)
        cfg["data"]["format"] = "preference"
        cfg["objective"] = {
            "name": "kto",
            "beta": resolved.get("beta", DEFAULT_BETA),
            "desirable_weight": resolved.get("desirable_weight", 1.0),
            "undesirable_weight": resolved.get("undesirable_weight", 1.0),
        }
    elif method_type == "reinforcement":  # GRPO, the grader as built-in rewards (jobs/graders.py)
        beta = extras.get("beta", "auto")
        cfg["objective"] = {
            "name": "grpo",
            "rewards": rewards_from_grader(grader).rewards,
            **({} if beta == "auto" else {"beta": float(beta)}),  # auto: GRPO's own default
            **{k: extras[k] for k in GRPO_KEYS if k in extras},
        }
        if resolved.get("eval_interval"):
            cfg["train"]["eval_every"] = int(resolved["eval_interval"])
    method_options = registry.get(training_type).config_cls.model_fields
    for key, value in extras.items():
        if value is None or key not in EXTRA_KEYS:
            continue
        section, name = EXTRA_KEYS[key].split(".")
        if section == "method" and name not in method_options:  # lora_rank means nothing to full or ia3
            continue
        cfg[section][name] = value
    return build_config(cfg, "job")
