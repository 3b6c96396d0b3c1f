"""Choosing a base model: each candidate scored zero-shot and few-shot on the user's validation split, next to
its predicted training memory and time, and ranked.

Each candidate is set up exactly as the run config would train it (the same data pipeline with the candidate's
tokenizer and chat template, the same method), so the estimate is the real one (models/memory.py: probed
activations, timed steps) and the scores are those of the untouched base. Ranking: the candidate's better
score (zero- or few-shot) on the chosen metric, then its validation loss on the answers (lower means the base
already finds the answers likely — the usual sign that fine-tuning will get far quickly).
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.errors import TuneforgeError


def evaluate_candidate(
    cfg: RunConfig, name: str, *, few_shot: int, max_examples: int, metric: str | None, timing: bool
) -> dict[str, Any]:
    from tuneforge.recipes.run import probe

    with probe(cfg, model=name) as rec:
        val = rec.splits["validation"][:max_examples]
        if not val:
            raise TuneforgeError(
                "model selection scores candidates on the validation split, which is empty",
                "set data.split.validation > 0 or data.validation",
            )
        row = _scores(rec, name, val, few_shot, metric)
        est = rec.estimate(timing=timing)
        loop = rec.loop
        seconds = (
            est.seconds_per_epoch * loop.total_steps / loop.steps_per_epoch
            if est.seconds_per_epoch is not None
            else None
        )
        row.update(
            peak_memory_gib=est.peak_bytes / 2**30,
            fits=est.fits,
            train_seconds=seconds,
            steps=loop.total_steps,
        )
    gc.collect()
    return row


def _scores(rec: Any, name: str, val: list, few_shot: int, metric: str | None) -> dict[str, Any]:
    """The untouched candidate zero- and few-shot on the validation examples, and its loss on their answers."""
    from tuneforge.data.tokenize import label_set
    from tuneforge.eval.compare import Variant, pick_shots, run_variant, validation_loss
    from tuneforge.experiments.decide import primary_metric

    cfg = rec.cfg
    lm = rec.trained_model()
    labels = label_set(rec.splits["train"] + val)
    variants = [Variant("zero_shot", "zero-shot", lm, adapters=False)]
    shots = pick_shots(rec.splits["train"], few_shot, cfg.seed)
    if shots:
        variants.append(Variant("few_shot", f"{len(shots)}-shot", lm, adapters=False, shots=shots))
    ecfg = cfg.eval.model_copy(update={"few_shot": few_shot})
    scored = [run_variant(v, val, cfg.data, ecfg, labels) for v in variants]
    vl = validation_loss(lm, val, cfg.data, False, labels)
    key = primary_metric(scored[0]["headline"], scored[0]["metrics"]["task"], metric)
    return {
        "model": name,
        "params": sum(p.numel() for p in lm.model.parameters()),
        "metric": key,
        "scores": {s["key"]: s["headline"][key] for s in scored},
        "best": max(s["headline"][key] for s in scored),
        "val_loss": vl["loss"] if vl else None,
        "ms_per_example": {s["key"]: s["ms_per_example"] for s in scored},
    }


def _candidate_or_error(cfg: RunConfig, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    import warnings

    # As the CLI does, in the candidate's own process too.
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return evaluate_candidate(cfg, name, **kwargs)
    except TuneforgeError as e:
        return {"model": name, "error": str(e)}


def select(
    cfg: RunConfig,
    candidates: list[str],
    *,
    few_shot: int = 3,
    max_examples: int = 50,
    metric: str | None = None,
    timing: bool = True,
    out: str | Path | None = None,
    show: bool = True,
    isolate: bool = True,
) -> dict[str, Any]:
    from tuneforge.progress import console

    if not candidates:
        raise TuneforgeError("no candidate models", "name them: --model smollm2-135m --model org/name ...")
    rows, failed = [], []
    for name in candidates:
        if show:
            console.print(f"[bold]candidate {name}[/]")
        kwargs = {"few_shot": few_shot, "max_examples": max_examples, "metric": metric, "timing": timing}
        if isolate:
            # A fresh process per candidate: the memory estimate counts what the process holds, and the previous
            # candidate's weights would otherwise be counted too (measured: 5.7 instead of 3.5 GiB for Gemma).
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                row = pool.submit(_candidate_or_error, cfg, name, kwargs).result()
        else:
            row = _candidate_or_error(cfg, name, kwargs)
        if "error" in row:  # one candidate that cannot be loaded does not end the comparison
            failed.append({"model": name, "error": row["error"]})
            if show:
                console.print(f"[yellow]skipped {name}: {row['error']}[/]")
        else:
            rows.append(row)
    if not rows:
        raise TuneforgeError("no candidate could be evaluated", "; ".join(f["error"] for f in failed))
    rows.sort(key=lambda r: (-r["best"], r["val_loss"] if r["val_loss"] is not None else float("inf")))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    report = {"metric": rows[0]["metric"], "ranking": rows, "failed": failed, "n_validation": max_examples}
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "select.json").write_text(json.dumps(report, indent=1))
        (out / "select.md").write_text(markdown(report))
    if show:
        print_selection(report, console)
    return report


def _row_cells(r: dict[str, Any]) -> list[str]:
    t = r["train_seconds"]
    return [
        str(r["rank"]),
        r["model"],
        f"{r['params'] / 1e6:.0f}M",
        f"{r['scores'].get('zero_shot', float('nan')):.1f}",
        f"{r['scores']['few_shot']:.1f}" if "few_shot" in r["scores"] else "—",
        f"{r['val_loss']:.3f}" if r["val_loss"] is not None else "—",
        f"{r['peak_memory_gib']:.2f}" + ("" if r["fits"] else " (does not fit)"),
        f"{t / 60:.1f}" if t is not None else "—",
    ]


HEAD = [
    "rank",
    "model",
    "params",
    "zero-shot",
    "few-shot",
    "val loss",
    "peak memory (GiB)",
    "train time (min)",
]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Candidates ranked by {report['metric']} (best of zero-/few-shot), then validation loss.",
        "",
        "| " + " | ".join(HEAD) + " |",
        "| --- | --- |" + " ---: |" * (len(HEAD) - 2),
    ]
    lines += ["| " + " | ".join(_row_cells(r)) + " |" for r in report["ranking"]]
    lines += [f"\nSkipped {f['model']}: {f['error']}" for f in report["failed"]]
    return "\n".join(lines) + "\n"


def print_selection(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"Base models ranked by {report['metric']} on the validation split")
    for h in HEAD:
        t.add_column(h, justify="left" if h == "model" else "right")
    for r in report["ranking"]:
        t.add_row(*_row_cells(r))
    console.print(t)
    for f in report["failed"]:
        console.print(f"[yellow]skipped {f['model']}[/]: {f['error']}")
