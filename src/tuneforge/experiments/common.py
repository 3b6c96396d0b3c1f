"""Pieces the experiments share: the data a user gave, prepared once, and written back as plain records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.data.schema import Example
from tuneforge.errors import ConfigError, DataError
from tuneforge.recipes.build import build_config


@dataclass
class RayTrials:
    """Trials (sweep) or folds (k-fold) as Ray tasks (`--ray ADDRESS`): `parallel` at a time, each asking for
    `cpus` CPUs and `gpus` GPUs (none unless given). The results are the same files as a local run's. A sweep
    trial's validations reach Optuna when it ends, so no trial is pruned half-way on Ray."""

    address: str | None = None  # None: a local Ray instance
    parallel: int = 2
    cpus: float = 1.0
    gpus: float = 0.0


def ray_cluster(ray: RayTrials) -> Any:
    """The `ray` module connected as `ray` says (a local instance sized for `parallel` tasks when no address)."""
    from tuneforge.recipes.ray_tasks import connect

    return connect(ray.address, num_cpus=max(1, int(ray.parallel * ray.cpus)))


def one_training_set(cfg: RunConfig, what: str) -> None:
    """Refuse a staged config where an experiment varies one training set."""
    if cfg.stages:
        raise ConfigError(
            f"{what} works on one training set, and this config trains {len(cfg.stages)} stages, each on its own "
            "data",
            f"run {what} on the config of the stage you want to improve (its data and method)",
        )


def prepare(cfg: RunConfig) -> Any:
    """Read, clean, validate and split the run's data as training would (token lengths with the model's
    tokenizer, as its recipe counts them), without loading the model's weights."""
    from tuneforge.data.prepare import prepare_data
    from tuneforge.models.load import base_path_for, load_tokenizer
    from tuneforge.models.registry import resolve
    from tuneforge.progress import Steps
    from tuneforge.recipes.splits import token_counter

    tok, _ = load_tokenizer(
        base_path_for(resolve(cfg.model.name), Steps(f"Preparing {cfg.model.name}")), cfg.model.chat_template
    )
    return prepare_data(cfg.data, cfg.seed, token_counter(cfg, tok))


def to_record(ex: Example) -> dict[str, Any]:
    """An example as the plain record a user would write (OpenAI chat, or text/label)."""
    if ex.kind == "classification":
        return {"text": ex.text, "label": ex.label}
    if ex.kind == "text":
        return {"text": ex.text}
    if ex.kind == "preference":
        raise DataError(
            "this experiment supports chat, classification and text data, not preference pairs",
            "run it on supervised data",
        )
    msgs = []
    for m in ex.messages:
        d = {"role": m.role, "content": m.content}
        for k in ("weight", "tool_calls", "name", "tool_call_id"):
            if getattr(m, k) is not None:
                d[k] = getattr(m, k)
        msgs.append(d)
    rec: dict[str, Any] = {"messages": msgs}
    if ex.tools:
        rec["tools"] = ex.tools
    return rec


def write_records(examples: Sequence[Example], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(to_record(e), ensure_ascii=False) + "\n" for e in examples))
    return path


def fixed_split_config(
    cfg: RunConfig, run_dir: Path, train: Path, validation: Path | None, test: Path | None, **clean: Any
) -> RunConfig:
    """The run's config, trained on exactly these files (no further splitting)."""
    data = cfg.model_dump(mode="json")
    data["run_dir"] = str(run_dir)
    data["data"]["train"] = str(train)
    data["data"]["validation"] = str(validation) if validation else None
    data["data"]["test"] = str(test) if test else None
    data["data"]["split"]["validation"] = 0.0
    data["data"]["split"]["test"] = 0.0
    data["data"]["clean"].update(clean)
    data["data"]["format"] = "auto"
    data["data"]["columns"] = {}
    data["data"].pop("mix", None)  # the files written hold every task's records already
    data.get("tracking", {}).pop("run_name", None)
    return build_config(data, f"{run_dir}")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1), 0 for a single value."""
    import statistics

    vals = [float(v) for v in values]
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
