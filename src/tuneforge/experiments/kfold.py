"""k-fold cross-validation of a run config: how much of a result is the config, how much the split.

The run's data is prepared as training prepares it; its test split stays aside, and the rest (train +
validation) is cut into k folds, stratified by answer where the config stratifies. Fold i trains on the other
k-1 folds and is scored on fold i: validation loss (and perplexity for a language model), and the tuned model's
scores — its generated answers with the task metrics (eval/metrics.py), or a classifier's accuracy and macro-F1.
Every metric is reported as mean ± standard deviation (n-1) over the folds, with each fold's value. Fold runs are
`<out>/fold-i/` (checkpoints removed when done); a staged config is refused (its stages train on different data).
With `ray` (`tuneforge kfold --ray ADDRESS`) the folds train as Ray tasks, `parallel` at a time, each with the
resources it asks for; the fold folders and kfold.json / kfold.md are the same as a local run's.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError, DataError
from tuneforge.experiments.common import (
    RayTrials,
    fixed_split_config,
    mean_std,
    one_training_set,
    prepare,
    ray_cluster,
    write_records,
)
from tuneforge.recipes.run import train
from tuneforge.rundir import RunDir


def fold_indices(n: int, k: int, strata: list[str], seed: int) -> list[list[int]]:
    """k disjoint validation index lists covering range(n); stratified when every stratum has >= k members."""
    from sklearn.model_selection import KFold, StratifiedKFold

    counts: dict[str, int] = {}
    for s in strata:
        counts[s] = counts.get(s, 0) + 1
    if len(counts) > 1 and min(counts.values()) >= k:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return [sorted(v.tolist()) for _, v in splitter.split(list(range(n)), strata)]
    splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    return [sorted(v.tolist()) for _, v in splitter.split(list(range(n)))]


def kfold(
    cfg: RunConfig,
    k: int = 5,
    out: str | Path | None = None,
    *,
    show: bool = True,
    ray: RayTrials | None = None,
) -> dict[str, Any]:
    from tuneforge.data.split import strata_key
    from tuneforge.data.tokenize import label_set
    from tuneforge.progress import console

    if k < 2:
        raise ConfigError(f"k-fold needs k >= 2 (got {k})", "pass --k 5")
    one_training_set(cfg, "k-fold")
    out = Path(out or Path(cfg.run_dir).with_name(Path(cfg.run_dir).name + "-kfold"))
    prepared = prepare(cfg)
    pool = prepared.train + prepared.validation
    if len(pool) < 2 * k:
        raise DataError(
            f"{len(pool)} examples are too few for {k} folds", f"use fewer folds (--k {len(pool) // 2})"
        )
    key = strata_key(pool, cfg.data.split.stratify)
    folds = fold_indices(len(pool), k, [key(e) for e in pool], cfg.seed)
    labels = label_set(pool)
    cluster = ray_cluster(ray) if ray is not None else None
    rows: list[Any] = []
    configs = []
    for i, val_idx in enumerate(folds):
        held = set(val_idx)
        fold_dir = out / f"fold-{i + 1}"
        train_f = write_records(
            [e for j, e in enumerate(pool) if j not in held], fold_dir / "input" / "train.jsonl"
        )
        val_f = write_records([pool[j] for j in val_idx], fold_dir / "input" / "validation.jsonl")
        fcfg = fixed_split_config(cfg, fold_dir / "run", train_f, val_f, None)
        if show:
            where = " (a Ray task)" if cluster is not None else ""
            console.print(
                f"[bold]fold {i + 1}/{k}[/]: {len(pool) - len(val_idx)} train, {len(val_idx)} held out{where}"
            )
        configs.append(fcfg)
        if cluster is None:
            rows.append(_fold(fcfg, labels, f"fold {i + 1}"))
            shutil.rmtree(RunDir(fcfg.run_dir).checkpoints, ignore_errors=True)
        else:  # all submitted now; Ray runs as many at once as the resources allow
            rows.append(_submit_fold(cluster, ray, fcfg, labels, f"fold {i + 1}"))
    ran = None
    if cluster is not None:
        done = cluster.get(rows)
        rows, ran = [d["row"] for d in done], [f"{d['ray']['node']}:{d['ray']['pid']}" for d in done]
        for fcfg in configs:
            shutil.rmtree(RunDir(fcfg.run_dir).checkpoints, ignore_errors=True)
    names = [n for n in rows[0] if all(n in r for r in rows)]
    summary: dict[str, Any] = {
        "k": k,
        "n_examples": len(pool),
        "fold_sizes": [len(f) for f in folds],
        "metrics": {},
    }
    if ran is not None:
        summary["ray"] = ran  # the node and process each fold trained in
    for n in names:
        m, s = mean_std([r[n] for r in rows])
        summary["metrics"][n] = {"mean": m, "std": s, "folds": [r[n] for r in rows]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "kfold.json").write_text(json.dumps(summary, indent=1))
    (out / "kfold.md").write_text(markdown(summary))
    if show:
        print_kfold(summary, console)
        console.print(f"Written: {out / 'kfold.json'}, {out / 'kfold.md'}")
    return summary


def _fold(fcfg: RunConfig, labels: list[str], title: str) -> dict[str, float]:
    """Train one fold (language model or classifier alike) and score it on its held-out fold."""
    result, rec = train(fcfg, overwrite=True)
    try:
        val = rec.splits["validation"]
        if fcfg.eval.max_examples:
            val = val[: fcfg.eval.max_examples]
        scored = rec.score(val, labels, title)
        last = rec.loop.validation_loss()  # the kept (best) weights, as finish() restored them
        row = {
            "best val loss": result.best_val_loss if result.best_val_loss is not None else last["val_loss"]
        }
        if "val_ppl" in last:  # language models
            row["val perplexity"] = last["val_ppl"]
        return row | scored["headline"]
    finally:
        rec.loop.cleanup()
        del rec
        gc.collect()


def _submit_fold(cluster: Any, ray: RayTrials, fcfg: RunConfig, labels: list[str], title: str) -> Any:
    from tuneforge.recipes.ray_tasks import submit

    return submit(cluster, _fold_task, ray.cpus, ray.gpus, fcfg.model_dump(mode="json"), labels, title)


def _fold_task(cfg_json: dict[str, Any], labels: list[str], title: str) -> dict[str, Any]:
    """A fold in a Ray task: the config travels as JSON; its row comes back as plain numbers, with where it ran."""
    from tuneforge.recipes.ray_tasks import where

    return {"row": _fold(RunConfig.model_validate(cfg_json), labels, title), "ray": where()}


def markdown(summary: dict[str, Any]) -> str:
    k = summary["k"]
    lines = [
        f"{k}-fold cross-validation over {summary['n_examples']} examples (folds of {summary['fold_sizes']}).",
        "",
        "| metric | mean ± std | " + " | ".join(f"fold {i + 1}" for i in range(k)) + " |",
        "| --- | ---: |" + " ---: |" * k,
    ]
    for name, m in summary["metrics"].items():
        fmt = "{:.3f}" if "loss" in name or "perplexity" in name else "{:.1f}"
        folds = " | ".join(fmt.format(v) for v in m["folds"])
        lines.append(f"| {name} | {fmt.format(m['mean'])} ± {fmt.format(m['std'])} | {folds} |")
    return "\n".join(lines) + "\n"


def print_kfold(summary: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    k = summary["k"]
    t = Table(title=f"{k}-fold cross-validation ({summary['n_examples']} examples)")
    t.add_column("metric")
    t.add_column("mean ± std", justify="right")
    for i in range(k):
        t.add_column(f"fold {i + 1}", justify="right")
    for name, m in summary["metrics"].items():
        fmt = "{:.3f}" if "loss" in name or "perplexity" in name else "{:.1f}"
        t.add_row(
            name, f"{fmt.format(m['mean'])} ± {fmt.format(m['std'])}", *[fmt.format(v) for v in m["folds"]]
        )
    console.print(t)
