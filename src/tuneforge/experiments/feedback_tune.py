"""Tune from feedback, gated: the current version trained further on what its users said, then compared with the
current version on a fixed held-out set before it may take any traffic.

1. The candidate continues the current version's adapter (`model.adapter`) on the feedback files: DPO where there
   are enough pairs (corrections, answers rated apart), KTO on the rated answers otherwise (`objective: auto`).
2. Both versions answer the current run's test split (the held-out set it was measured on) with the same
   decoding; the task's primary metric (exact match for JSON and short answers) and, where the run names
   general data (`eval.general`), the general-text perplexity of each are measured.
3. The gate passes when the candidate's metric is at most `tolerance` points below the current version's and its
   general perplexity at most `forgetting_tolerance` % above it. Its decision and every number are returned and
   written to OUT/gate.json; only a passed candidate may be added to a deployment (api.tune_from_feedback).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.config import EvalConfig
from tuneforge.errors import TuneforgeError
from tuneforge.progress import console
from tuneforge.recipes.build import load_config
from tuneforge.rundir import RunDir

MIN_PAIRS = 16  # fewer DPO pairs than this: KTO on the rated answers instead


def choose_objective(files: dict[str, Path], wanted: str = "auto") -> str:
    if wanted != "auto":
        if wanted not in files:
            raise TuneforgeError(
                f"the feedback gave no {wanted} rows",
                f"use objective {' or '.join(files) or 'kto'}, or collect more",
            )
        return wanted
    pairs = len(files["dpo"].read_text().splitlines()) if "dpo" in files else 0
    if pairs >= MIN_PAIRS:
        return "dpo"
    if "kto" in files:
        return "kto"
    raise TuneforgeError(
        "the feedback gave nothing to train on (no rated answers, no corrections)",
        "collect thumbs or corrections on stored completions first (POST /v1/chat/completions/{id}/feedback)",
    )


def candidate_overrides(current: Path, files: dict[str, Path], out: Path, objective: str) -> list[str]:
    """The current run's config, retargeted: its adapter continued on the feedback file (a tenth held out for
    validation). The held-out set of the gate is the current run's own test split, scored after training."""
    return [
        f"run_dir={out / 'candidate'}",
        f"model.adapter={current}",
        f"objective.name={objective}",
        f"data.train={files[objective]}",
        "data.format=auto",
        "data.split.test=0.0",
        "data.split.validation=0.1",
        "data.split.stratify=none",
        "data.clean.dedupe=exact",  # two arms' answers to one ticket differ by a word: both are data here
        "train.epochs=1",
        # a gentle rate: the adapter is already tuned, and the feedback set is small (override with --set)
        "train.learning_rate=1e-4",
        "train.lr_range_test=false",
        "train.packing=false",
        "forgetting.replay=0.0",
        "forgetting.distill=0.0",
    ]


def gate(
    current: dict[str, Any], candidate: dict[str, Any], tolerance: float, forgetting_tolerance: float
) -> dict[str, Any]:
    """The gate's decision from each version's {metric, value, general_perplexity}."""
    reasons = []
    drop = current["value"] - candidate["value"]
    if drop > tolerance:
        reasons.append(
            f"{current['metric']} {candidate['value']:.1f} is {drop:.1f} points below the current {current['value']:.1f} (tolerance {tolerance:g})"
        )
    rise = None
    if current.get("general_perplexity") and candidate.get("general_perplexity"):
        rise = 100 * (candidate["general_perplexity"] / current["general_perplexity"] - 1)
        if rise > forgetting_tolerance:
            reasons.append(
                f"general perplexity {rise:+.1f}% against the current version (tolerance {forgetting_tolerance:g}%)"
            )
    return {
        "passed": not reasons,
        "metric": current["metric"],
        "current": current["value"],
        "candidate": candidate["value"],
        "difference": candidate["value"] - current["value"],
        "tolerance": tolerance,
        "general_perplexity_change_pct": rise,
        "forgetting_tolerance_pct": forgetting_tolerance,
        "reasons": reasons or ["not worse than the current version beyond the tolerances"],
    }


def _figures(report: dict[str, Any], key: str) -> dict[str, Any]:
    """One version's primary metric (the table's row for the task, as `decide` picks it) and general perplexity."""
    from tuneforge.eval.metrics import headline
    from tuneforge.experiments.decide import primary_metric

    variant = next(v for v in report["variants"] if v["key"] == key)
    rows = headline(variant["metrics"])
    metric = primary_metric(rows, report.get("task", "json"))
    forgetting = report.get("forgetting") or {}
    ppl = forgetting.get("base_perplexity" if key == "base" else "tuned_perplexity")
    return {"metric": metric, "value": float(rows[metric]), "general_perplexity": ppl}


def tune_from_feedback(
    current: Path,
    files: dict[str, Path],
    out: Path,
    *,
    objective: str = "auto",
    tolerance: float = 2.0,
    forgetting_tolerance: float = 10.0,
    sets: list[str] | None = None,
) -> dict[str, Any]:
    """Train the candidate, compare it with `current` on the held-out set, decide. Returns the gate's record."""
    from tuneforge.recipes.evaluate import compare_models
    from tuneforge.recipes.run import finetune

    current = Path(current)
    if not RunDir(current).is_run() or not (RunDir(current).data / "test.jsonl").is_file():
        raise TuneforgeError(
            f"{current} is not a finished run with a test split", "give the run folder of the current version"
        )
    objective = choose_objective(files, objective)
    cfg = load_config(
        RunDir(current).config, [*candidate_overrides(current, files, out, objective), *(sets or [])]
    )
    console.print(f"[bold]Candidate[/]: {current} continued with {objective} on {files[objective]}")
    finetune(cfg, overwrite=True, evaluate=False)
    ecfg = cfg.eval.model_copy(update={"few_shot": 0, "samples": 3})
    report = compare_models(
        str(current),
        str(out / "candidate"),
        data=str(RunDir(current).data / "test.jsonl"),
        eval_cfg=EvalConfig(**ecfg.model_dump()),
        out_dir=str(out / "gate"),
        show=False,
    )
    record = {
        "current_run": str(current),
        "candidate_run": str(out / "candidate"),
        "objective": objective,
        "train_file": str(files[objective]),
        "held_out": report.get("n_test"),
        **gate(_figures(report, "base"), _figures(report, "tuned"), tolerance, forgetting_tolerance),
    }
    (out / "gate.json").write_text(json.dumps(record, indent=1))
    verdict = "[green]passed[/]" if record["passed"] else "[red]refused[/]"
    console.print(
        f"Gate {verdict}: {record['metric']} current {record['current']:.1f} → candidate {record['candidate']:.1f} "
        f"on {record['held_out']} held-out examples; " + "; ".join(record["reasons"])
    )
    return record
