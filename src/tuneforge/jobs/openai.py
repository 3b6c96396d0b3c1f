"""The OpenAI translation of a job, one place for each: the model and checkpoint ids, the names of the training
metrics (job events, checkpoint metrics, the results CSV), the hyperparameters' "auto" policy with the base
learning rate, and the job's tuneforge run config.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
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

MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
DEFAULT_EPOCHS = 3
MAX_AUTO_EPOCHS = 25
DEFAULT_BETA = 0.1

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


def auto_epochs(n_train: int) -> int:
    """3, raised for small files so that training sees at least 100 examples (at most 25 epochs), lowered for
    large ones so that it sees at most 25,000 examples (at least 1): OpenAI's published rule."""
    n = DEFAULT_EPOCHS
    if n_train * n < MIN_TARGET_EXAMPLES:
        n = min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / max(n_train, 1)))
    elif n_train * n > MAX_TARGET_EXAMPLES:
        n = max(1, MAX_TARGET_EXAMPLES // n_train)
    return n


def auto_batch_size(n_train: int) -> int:
    """8 below 2,000 training examples, 16 below 20,000, else 32."""
    return 8 if n_train < 2_000 else 16 if n_train < 20_000 else 32


def resolve(hp: dict[str, Any], n_train: int) -> dict[str, Any]:
    """The three OpenAI hyperparameters (and DPO's beta) with "auto" replaced by numbers, once the training file
    has been read (the rules are documented in the README). An "auto" learning_rate_multiplier is 1: the job
    trains at `base_learning_rate`. An "auto" beta is 0.1."""
    n_epochs = hp.get("n_epochs", "auto")
    batch = hp.get("batch_size", "auto")
    lrm = hp.get("learning_rate_multiplier", "auto")
    out = {
        "n_epochs": auto_epochs(n_train) if n_epochs in (None, "auto") else int(n_epochs),
        "batch_size": auto_batch_size(n_train) if batch in (None, "auto") else int(batch),
        "learning_rate_multiplier": 1.0 if lrm in (None, "auto") else float(lrm),
    }
    if "beta" in hp:  # DPO jobs
        out["beta"] = DEFAULT_BETA if hp["beta"] in (None, "auto") else float(hp["beta"])
    return out


def base_learning_rate(training_type: str, settings: Settings) -> float:
    """The learning rate a multiplier of 1 means: the server's `lora_learning_rate` (2e-4) for the adapter
    methods, `full_learning_rate` (2e-5) for the others (full fine-tuning moves every weight)."""
    if registry.get(training_type).artifact == "adapter":
        return settings.lora_learning_rate
    return settings.full_learning_rate


# -------------------------------------------------------------------------------------------- run config


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
) -> RunConfig:
    """The run config of a job: no test split (nothing is held out of the user's training file), validation
    from the validation file only, records kept as given (no de-duplication: the job trains on what was sent).
    The method keeps its own defaults (LoRA: r 16, alpha 32, all linear layers) unless the extras set them."""
    cfg: dict[str, Any] = {
        "run_dir": str(run_dir),
        "seed": seed,
        "model": {"name": base_source},
        "data": {
            "train": str(train_path),
            "validation": str(validation_path) if validation_path else None,
            "split": {"validation": 0.0, "test": 0.0},
            "clean": {"dedupe": "none"},
            "max_length": max_length,
            "truncation": "raise",
            "min_examples": 1,
        },
        "method": {"name": training_type},  # any registered LM method (`tuneforge methods`)
        "train": {
            "epochs": resolved["n_epochs"],
            "batch_size": resolved["batch_size"],
            "learning_rate": base_learning_rate * resolved["learning_rate_multiplier"],
        },
    }
    if method_type == "dpo":  # preference pairs; the reference is the base (the adapter switched off)
        cfg["data"]["format"] = "preference"
        cfg["objective"] = {"name": "dpo", "beta": resolved.get("beta", DEFAULT_BETA)}
    method_options = registry.get(training_type).config_cls.model_fields
    for key, value in extras.items():
        if value is None or key not in EXTRA_KEYS:
            continue
        section, name = EXTRA_KEYS[key].split(".")
        if section == "method" and name not in method_options:  # lora_rank means nothing to full or ia3
            continue
        cfg[section][name] = value
    return build_config(cfg, "job")
