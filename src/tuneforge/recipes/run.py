"""From a config to a trained, evaluated run: the one place that decides how a config is trained.

finetune(cfg)   what the CLI, the Python API, the worker and sweeps call: a staged config trains its stages
                in order (recipes/stages.py), each through finetune; any other config is trained by `train`,
                then evaluated on its test split and reported
train(cfg)      one training set: the recipe the method names (recipe_for: recipes/lm.py or
                recipes/classify.py) set up, trained and finished; the recipe, with its model still loaded,
                is returned for evaluation (k-fold and augmentation score it on their own examples)
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError
from tuneforge.eval.report import plot_loss
from tuneforge.methods import registry
from tuneforge.progress import console
from tuneforge.recipes.classify import Classify
from tuneforge.recipes.lm import FineTune
from tuneforge.train import distributed
from tuneforge.train.loop import EventFn, TrainResult

Recipe = FineTune | Classify


def recipe_for(cfg: RunConfig, **options: Any) -> Recipe:
    """The recipe that trains this (single-stage) config: a classification head's, or the language model's."""
    if cfg.stages:
        raise ConfigError(
            f"{cfg.run_dir}: this config trains {len(cfg.stages)} stages, each on its own data",
            "run it with `tuneforge train` (or api.finetune), or use one stage's config here",
        )
    if registry.get(cfg.method.name).recipe == "classify":
        return Classify(cfg, **options)
    return FineTune(cfg, **options)


@contextlib.contextmanager
def probe(cfg: RunConfig, model: str | None = None, **options: Any) -> Iterator[FineTune]:
    """A language-model run set up in a scratch folder and not trained (optionally on another base `model`): what
    the memory and time estimate and model selection look at. The run's own folder is left untouched. `options`
    as the recipe takes them (device ...)."""
    if cfg.stages or registry.get(cfg.method.name).recipe != "lm":
        raise ConfigError(
            "the estimate covers one language-model run; this config "
            + (f"trains {len(cfg.stages)} stages" if cfg.stages else f"trains a {cfg.method.name} head"),
            "estimate a single-stage config with a language-model method (lora, full, ...)",
        )
    with tempfile.TemporaryDirectory(prefix="tuneforge-probe-") as tmp:
        scratch = cfg.model_copy(deep=True)
        scratch.run_dir = tmp
        scratch.train.memory_check = False
        scratch.train.lr_range_test = False  # the estimate does not depend on the rate
        scratch.tracking.backends = []
        if model is not None:
            scratch.model.name = model
        rec = FineTune(scratch, **options)
        rec.setup()
        try:
            yield rec
        finally:
            rec.loop.cleanup()


def train(cfg: RunConfig, **options: Any) -> tuple[TrainResult, Recipe]:
    """setup → train → finish. Options as train.loop.RunOptions takes them (resume, overwrite, on_event,
    should_stop, device). The caller cleans up with `recipe.loop.cleanup()`."""
    rec = recipe_for(cfg, **options)
    rec.setup()
    try:
        result = rec.loop.train()
        if not result.stopped_by_request:
            rec.loop.finish()
    except BaseException:  # a crash or Ctrl-C: the tracked run says so instead of staying "running"
        if rec.loop.tracker is not None:
            rec.loop.tracker.close(status="FAILED")
        raise
    return result, rec


def finetune(
    cfg: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    evaluate: bool = True,
    on_event: EventFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | None = None,
    show: bool = True,
) -> dict[str, Any]:
    """Train a run; then (unless evaluate=False) score it on the test split and write reports.

    Returns a summary: {"run_dir", "train": {steps, best_val_loss, stopped_by_request, ...}, "report": {...} |
    None}; for a staged config the last stage's, with every stage under "stages".
    """
    options: dict[str, Any] = {"on_event": on_event, "should_stop": should_stop, "device": device}
    ranks = distributed.init(device)
    scratch = None
    # Launched by torchrun (`tuneforge train --nproc N`): this process is one data-parallel rank.
    if ranks.active:
        options["device"] = distributed.device_for(device, ranks)
        if not ranks.main:  # rank 0 writes the run folder and evaluates; this rank writes into a scratch one
            scratch = distributed.scratch_dir(ranks)
            options["shared_run"] = str(Path(cfg.run_dir).resolve())
            cfg = cfg.model_copy(deep=True)
            cfg.run_dir, cfg.tracking.backends = scratch, []
            resume, overwrite, evaluate, show = False, True, False, False
            console.quiet = True
    try:
        return _finetune(cfg, resume, overwrite, evaluate, show, options)
    finally:
        if scratch is not None:
            distributed.remove_scratch(scratch)


def _finetune(
    cfg: RunConfig, resume: bool, overwrite: bool, evaluate: bool, show: bool, options: dict[str, Any]
) -> dict[str, Any]:
    if cfg.stages:
        from tuneforge.recipes.stages import run_stages

        return run_stages(
            cfg,
            finetune,
            resume=resume,
            overwrite=overwrite,
            evaluate=evaluate,
            show=show,
            **{k: options[k] for k in ("on_event", "should_stop", "device")},
        )
    result, rec = train(cfg, resume=resume, overwrite=overwrite, **options)
    try:
        summary = {"run_dir": str(rec.run.root), "train": train_summary(result, rec), "report": None}
        if not options.get("shared_run"):  # (a data-parallel rank other than 0 has no metrics of its own)
            plot_loss(rec.run.read_metrics(), rec.run.loss_curve)
        if evaluate and not result.stopped_by_request and rec.splits["test"]:
            summary["report"] = rec.report(summary["train"], show)
    finally:
        rec.loop.cleanup()
    return summary


def train_summary(result: TrainResult, rec: Recipe) -> dict[str, Any]:
    """The run's counters: train_done.json once finished, the loop's own counts when stopped before that."""
    counts = {
        "steps": result.steps,
        "best_step": result.best_step,
        "best_val_loss": result.best_val_loss,
        "stopped_early": result.stopped_early,
        "tokens_seen": result.tokens_seen,
        "train_seconds": round(result.train_seconds, 1),
    }
    return {**counts, **rec.run.read_done(), "stopped_by_request": result.stopped_by_request}
