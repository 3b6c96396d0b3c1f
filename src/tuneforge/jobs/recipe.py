"""From a job's OpenAI-style hyperparameters to a tuneforge run config.

`"auto"` resolves, once the training file has been read, as follows (documented in the README):
- n_epochs: 3, raised for small files so that training sees at least 100 examples (at most 25 epochs), lowered
  for large ones so that it sees at most 25,000 examples (at least 1) — OpenAI's published rule.
- batch_size: 8 below 2,000 training examples, 16 below 20,000, else 32.
- learning_rate_multiplier: 1, i.e. the learning rate is the server's `lora_learning_rate` (2e-4) for LoRA or
  `full_learning_rate` (2e-5) for full fine-tuning.
- beta (DPO jobs): 0.1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig, build_config

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
    n = DEFAULT_EPOCHS
    if n_train * n < MIN_TARGET_EXAMPLES:
        n = min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / max(n_train, 1)))
    elif n_train * n > MAX_TARGET_EXAMPLES:
        n = max(1, MAX_TARGET_EXAMPLES // n_train)
    return n


def auto_batch_size(n_train: int) -> int:
    return 8 if n_train < 2_000 else 16 if n_train < 20_000 else 32


def resolve(hp: dict[str, Any], n_train: int) -> dict[str, Any]:
    """The three OpenAI hyperparameters with "auto" replaced by numbers."""
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
    from the validation file only, records kept as given (no de-duplication: the job trains on what was sent)."""
    method: dict[str, Any] = {"name": training_type}  # any registered LM method (`tuneforge methods`)
    if training_type == "lora":
        method.update(r=16, alpha=32, dropout=0.0, target_modules="all-linear")
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
        "method": method,
        "train": {
            "epochs": resolved["n_epochs"],
            "batch_size": resolved["batch_size"],
            "learning_rate": base_learning_rate * resolved["learning_rate_multiplier"],
        },
    }
    if method_type == "dpo":  # preference pairs; the reference is the base (the adapter switched off)
        cfg["data"]["format"] = "preference"
        cfg["objective"] = {"name": "dpo", "beta": resolved.get("beta", DEFAULT_BETA)}
    from tuneforge.methods import registry

    method_options = registry.get(training_type).config_cls.model_fields
    for key, value in extras.items():
        if value is None or key not in EXTRA_KEYS:
            continue
        section, name = EXTRA_KEYS[key].split(".")
        if section == "method" and name not in method_options:  # lora_rank means nothing to full or ia3
            continue
        cfg[section][name] = value
    return build_config(cfg, "job")
