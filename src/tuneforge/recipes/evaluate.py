"""Scoring models that are already trained: one model on held-out data (`tuneforge eval`), or a before/after pair
on the same questions (`tuneforge compare`) — base models, run folders, classifier runs alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.config import DataConfig, EvalConfig
from tuneforge.data.schema import Example
from tuneforge.errors import TuneforgeError
from tuneforge.eval.compare import compare, pick_shots
from tuneforge.eval.report import print_report, write_report
from tuneforge.models.load import LoadedModel
from tuneforge.models.registry import resolve
from tuneforge.progress import console
from tuneforge.recipes.runs import evaluate_classifier_run, is_classifier_run, load_any, saved_splits


def load_eval_data(
    data: str | None, run_dir: Path | None, data_cfg: DataConfig | None, shots: int = 0
) -> tuple[list[Example], list[Example], list[Example], DataConfig]:
    """(train, validation, test, data config) to evaluate on: a file given with --data (all of it is test; solved
    examples for few-shot come from the run's training split), or a run's saved splits."""
    from tuneforge.data.formats import load_file

    if data:
        cfg = data_cfg or DataConfig(train=data)
        res = load_file(data, cfg.format, cfg.columns, cfg.system_prompt)
        if not res.examples:
            raise TuneforgeError(f"{data} holds no usable examples", "run `tuneforge data inspect` on it")
        test = res.examples
        train: list[Example] = saved_splits(run_dir)[0] if run_dir is not None else []
        if not train and shots:
            # No training split to draw solved examples from: take them from the file and score the rest.
            chosen = pick_shots(test, shots, seed=0)
            train, test = chosen, [e for e in test if all(e is not c for c in chosen)]
        return train, [], test, cfg
    if run_dir is not None:
        tr, va, te, rcfg = saved_splits(run_dir)
        if not te:
            raise TuneforgeError(f"run {run_dir} has no test split", "pass --data FILE to evaluate on")
        return tr, va, te, rcfg.data
    raise TuneforgeError(
        "nothing to evaluate on", "pass --data FILE, or a run folder whose test split is used"
    )


def compare_models(
    base_name: str,
    tuned_name: str | None,
    *,
    data: str | None = None,
    eval_cfg: EvalConfig | None = None,
    out_dir: str | None = None,
    show: bool = True,
) -> dict[str, Any]:
    """Before/after report for any pair, or a single model's scores when tuned_name is None."""
    if tuned_name is None and is_classifier_run(base_name):  # a classification head: labels, not text
        return evaluate_classifier_run(Path(base_name), data=data, out_dir=out_dir, show=show)
    eval_cfg = eval_cfg or EvalConfig()
    tuned = load_any(tuned_name) if tuned_name else None
    # An adapter run over this very base answers as the base with its adapter off: one copy in memory.
    shared = tuned is not None and _same_base(base_name, tuned)
    base = tuned if shared else load_any(base_name)
    run_dir = (tuned.run_dir if tuned is not None else None) or base.run_dir
    train, val, test, dcfg = load_eval_data(data, run_dir, None, eval_cfg.few_shot)
    report = compare(
        base,
        tuned,
        test,
        train=train,
        validation=val,
        data_cfg=dcfg,
        eval_cfg=eval_cfg,
        shared_weights=shared,
    )
    if out_dir:
        write_report(report, Path(out_dir))
    if show:
        print_report(report, console)
    return report


def _same_base(base_name: str, tuned: LoadedModel) -> bool:
    """True if `tuned` is a PEFT run over `base_name`, so the base is the tuned model with adapters off."""
    if tuned.run_dir is None or getattr(tuned.model, "peft_config", None) is None:
        return False
    src = resolve(base_name)
    if src.kind == "run":
        return False
    return src.display == tuned.name or str(src.path or src.hub_id) == tuned.base_path
