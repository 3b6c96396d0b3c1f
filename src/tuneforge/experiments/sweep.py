"""Hyperparameter search: grid, random, or Optuna's TPE, with poor trials pruned by validation loss.

A sweep file names a base run config and a search space over any config keys (`train.learning_rate`,
`method.r`, `train.epochs`, `train.batch_size` ...):

    config: tickets-lora.yaml          # relative to the sweep file
    sampler: tpe                       # grid | random | tpe
    trials: 12
    space:
      train.learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}
      method.r: [4, 8, 16]

Each trial is an ordinary training run (`<out>/trial-NNN/`, trained as `tuneforge train` would: a classifier
config trains its head, a staged config every stage) scored by its best validation loss (a staged run's: its last
stage's). With `prune`,
Optuna's median rule stops a trial whose validation loss at its k-th evaluation is worse than the median of the
earlier trials at their k-th evaluation — evaluations, not steps, so trials with different batch sizes compare.
Written to `out`: trials.csv and sweep.json (every trial, its parameters, value, state, steps and time),
sweep.png (objective per trial; validation curves), and best.yaml (the base config with the best parameters).
"""

from __future__ import annotations

import csv
import gc
import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneforge.config import RunConfig, apply_overrides, dump_config
from tuneforge.errors import ConfigError
from tuneforge.experiments.common import RayTrials, ray_cluster
from tuneforge.recipes.build import build_config, load_config
from tuneforge.rundir import RunDir


class Range(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    log: bool = False
    integer: bool = Field(False, description="Draw whole numbers (e.g. LoRA rank).")


class PrunerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    startup_trials: int = Field(
        2, ge=0, description="Trials that always run to the end (the first reference)."
    )
    warmup_evals: int = Field(1, ge=0, description="Evaluations of a trial before it can be pruned.")


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: str = Field(..., description="Base run config (YAML), relative to the sweep file.")
    set: list[str] = Field(default_factory=list, description="Overrides applied to every trial.")
    out: str = Field("runs/sweep", description="Folder for the trials and the results.")
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    trials: int | None = Field(None, ge=1, description="Trials to run (grid: default all combinations).")
    seed: int = 0
    prune: bool = True
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    keep_checkpoints: bool = Field(False, description="Keep each trial's resumable checkpoints (disk).")
    space: dict[str, list[Any] | Range]


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepConfig, RunConfig]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file {p} does not exist", "start from examples/sweeps/tickets.yaml")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}".splitlines()[0], "fix the YAML syntax") from None
    data = apply_overrides(data, overrides or [])
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{p}: `{loc}`: {err['msg']}", "see examples/sweeps/tickets.yaml") from None
    if not sweep.space:
        raise ConfigError(f"{p}: the search space is empty", "add keys under `space:`")
    base_path = Path(sweep.config)
    if not base_path.is_absolute() and not base_path.exists():
        base_path = p.parent / base_path
    base = load_config(base_path, sweep.set)
    for key, spec in sweep.space.items():
        if sweep.sampler == "grid" and isinstance(spec, Range):
            raise ConfigError(
                f"{p}: grid search needs a list of values for `{key}`, not a range",
                f"write e.g. `{key}: [{spec.low:g}, {spec.high:g}]`, or use sampler: random or tpe",
            )
        values = spec if isinstance(spec, list) else [spec.low, spec.high]
        for v in values:  # every value must make a valid config, before any trial trains
            apply_trial(base, {key: v}, "check")
    return sweep, base


def apply_trial(base: RunConfig, params: dict[str, Any], run_dir: str | Path) -> RunConfig:
    data = apply_overrides(base.model_dump(mode="json"), [f"{k}={_yaml(v)}" for k, v in params.items()])
    data["run_dir"] = str(run_dir)
    return build_config(data, "sweep trial " + ", ".join(f"{k}={v}" for k, v in params.items()))


def _yaml(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _suggest(trial: Any, key: str, spec: list[Any] | Range) -> Any:
    if isinstance(spec, list):
        return trial.suggest_categorical(key, spec)
    if spec.integer:
        return trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, log=spec.log)


def run_sweep(
    sweep: SweepConfig, base: RunConfig, *, show: bool = True, ray: RayTrials | None = None
) -> dict[str, Any]:
    """Run the sweep's trials (each through recipes.run.finetune: staged and classifier configs alike) and write
    the results; returns the summary sweep.json holds. With `ray`, the trials run as Ray tasks, several at once."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "tuneforge sweep needs optuna", "pip install 'tuneforge[experiments]' (or pip install optuna)"
        ) from None
    from tuneforge.progress import console

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(sweep.out)
    out.mkdir(parents=True, exist_ok=True)
    study, n_trials = _study(optuna, sweep)
    records: list[dict[str, Any]] = []

    cluster = None
    if ray is not None:
        cluster = ray_cluster(ray)

    def objective(trial: Any) -> float:
        if cluster is not None:
            rec = _trial_on_ray(trial, sweep, base, out, show, cluster, ray)
        else:
            rec = _trial(trial, sweep, base, out, show)
        records.append(rec)
        if rec["state"] == "pruned":
            if show:
                console.print(f"  pruned after {rec['steps']} steps (val loss {rec['val_curve'][-1]:.4f})")
            raise optuna.TrialPruned()
        if rec["value"] is None:
            raise ConfigError(
                "a sweep trial ran without validation, so it has no validation loss to compare",
                "give the base config a validation split (data.split.validation > 0 or data.validation)",
            )
        return rec["value"]

    # On Ray, Optuna's threads each wait for one trial's task: `parallel` trials train at once.
    study.optimize(objective, n_trials=n_trials, catch=(), n_jobs=ray.parallel if cluster is not None else 1)
    records.sort(key=lambda r: r["trial"])
    summary = _write_results(sweep, base, records, out)
    if show:
        print_sweep(summary, list(sweep.space), console)
        console.print(
            f"Best config: [bold]{out / 'best.yaml'}[/]; table {out / 'trials.csv'}, plot {out / 'sweep.png'}"
        )
    return summary


def _study(optuna: Any, sweep: SweepConfig) -> tuple[Any, int]:
    """The Optuna study for the sweep's sampler and pruner, and how many trials to run."""
    keys = list(sweep.space)
    combos: list[tuple] = []
    if sweep.sampler == "grid":
        grid = {k: list(v) for k, v in sweep.space.items()}  # type: ignore[arg-type]
        sampler: Any = optuna.samplers.GridSampler(grid, seed=sweep.seed)
        combos = list(itertools.product(*grid.values()))
        n_trials = min(sweep.trials or len(combos), len(combos))
    elif sweep.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=sweep.seed)
        n_trials = sweep.trials or 10
    else:
        sampler = optuna.samplers.TPESampler(
            seed=sweep.seed, n_startup_trials=min(4, (sweep.trials or 10) // 2)
        )
        n_trials = sweep.trials or 10
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=sweep.pruner.startup_trials, n_warmup_steps=sweep.pruner.warmup_evals
        )
        if sweep.prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)
    for combo in combos[:n_trials]:  # grid: in the order the space lists them, readable and reproducible
        study.enqueue_trial(dict(zip(keys, combo, strict=True)))
    return study, n_trials


def _trial_config(
    trial: Any, sweep: SweepConfig, base: RunConfig, out: Path, show: bool, where: str = ""
) -> tuple[dict[str, Any], Path, RunConfig]:
    """A trial's sampled parameters, its run folder and its config (announced with `show`)."""
    from tuneforge.progress import console

    params = {k: _suggest(trial, k, sweep.space[k]) for k in sweep.space}
    run_dir = out / f"trial-{trial.number:03d}"
    if show:
        console.print(
            f"[bold]trial {trial.number}[/]{where}: " + ", ".join(f"{k}={v}" for k, v in params.items())
        )
    return params, run_dir, apply_trial(base, params, run_dir)


def _trial(trial: Any, sweep: SweepConfig, base: RunConfig, out: Path, show: bool) -> dict[str, Any]:
    """Train one trial, reporting each validation to Optuna (which may prune it); its record for trials.csv."""
    from tuneforge.recipes.run import finetune

    params, run_dir, cfg = _trial_config(trial, sweep, base, out, show)
    state: dict[str, Any] = {"evals": 0, "prune": False, "curve": []}

    def on_event(kind: str, row: dict[str, Any]) -> None:
        if kind == "metrics" and "val_loss" in row:
            state["evals"] += 1
            state["curve"].append(row["val_loss"])
            trial.report(row["val_loss"], state["evals"])
            if trial.should_prune():
                state["prune"] = True

    t0 = time.time()
    summary = finetune(
        cfg, overwrite=True, evaluate=False, on_event=on_event, should_stop=lambda: state["prune"], show=False
    )
    gc.collect()
    return _record(trial, sweep, params, run_dir, summary, state["curve"], t0)


def _trial_on_ray(
    trial: Any, sweep: SweepConfig, base: RunConfig, out: Path, show: bool, cluster: Any, ray: RayTrials
) -> dict[str, Any]:
    """One trial as a Ray task; its validation losses, read from its run folder, are reported to Optuna after."""
    from tuneforge.recipes.ray_tasks import submit_finetune

    params, run_dir, cfg = _trial_config(trial, sweep, base, out, show, " on Ray")
    t0 = time.time()
    ref = submit_finetune(cluster, cfg, ray.cpus, ray.gpus, overwrite=True, evaluate=False, show=False)
    summary = cluster.get(ref)
    curve = [row["val_loss"] for row in RunDir(run_dir).read_metrics() if "val_loss" in row]
    for i, value in enumerate(curve, 1):
        trial.report(value, i)
    ran = summary.get("ray", {})
    return {
        **_record(trial, sweep, params, run_dir, summary, curve, t0),
        "ray": f"{ran.get('node')}:{ran.get('pid')}",
    }


def _record(
    trial: Any,
    sweep: SweepConfig,
    params: dict[str, Any],
    run_dir: Path,
    summary: dict[str, Any],
    curve: list[float],
    t0: float,
) -> dict[str, Any]:
    """A finished trial's row of trials.csv (its checkpoints removed unless the sweep keeps them)."""
    if not sweep.keep_checkpoints:  # the run's, and each stage's of a staged run
        run = RunDir(run_dir)
        for folder in [run, *run.stage_runs()]:
            shutil.rmtree(folder.checkpoints, ignore_errors=True)
    done = summary["train"]
    return {
        "trial": trial.number,
        **params,
        "value": done.get("best_val_loss"),
        # A trial judged poor at its last evaluation has already trained every step: complete, not pruned.
        "state": "pruned" if done["stopped_by_request"] else "complete",
        "steps": done.get("steps"),
        "seconds": round(time.time() - t0, 1),
        "run_dir": str(run_dir),
        "val_curve": curve,
    }


def _write_results(
    sweep: SweepConfig, base: RunConfig, records: list[dict[str, Any]], out: Path
) -> dict[str, Any]:
    """best.yaml, sweep.json, trials.csv and sweep.png; the summary."""
    keys = list(sweep.space)
    complete = [r for r in records if r["state"] == "complete" and r["value"] is not None]
    if not complete:
        raise ConfigError("every trial was pruned", "set prune: false or pruner.startup_trials >= 1")
    best = min(complete, key=lambda r: r["value"])
    best_params = {k: best[k] for k in keys}
    best_cfg = apply_trial(base, best_params, out / "best")
    (out / "best.yaml").write_text(
        f"# Best of {len(records)} trials ({sweep.sampler}): validation loss {best['value']:.4f} "
        f"(trial {best['trial']}). Train it with `tuneforge train {out / 'best.yaml'}`.\n"
        + dump_config(best_cfg)
    )
    summary = {
        "sampler": sweep.sampler,
        "objective": "best validation loss (lower is better)",
        "trials": records,
        "best": {"trial": best["trial"], "params": best_params, "value": best["value"]},
        "pruned": sum(r["state"] == "pruned" for r in records),
    }
    (out / "sweep.json").write_text(json.dumps(summary, indent=1, default=str))
    with open(out / "trials.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["trial", *keys, "value", "state", "steps", "seconds", "run_dir"])
        w.writeheader()
        for r in records:
            w.writerow({k: r[k] for k in w.fieldnames})
    plot_sweep(summary, keys, out / "sweep.png")
    return summary


def print_sweep(summary: dict[str, Any], keys: list[str], console: Any) -> None:
    from rich.table import Table

    t = Table(
        title=f"Sweep ({summary['sampler']}): {len(summary['trials'])} trials, {summary['pruned']} pruned"
    )
    for col in ("trial", *keys, "best val loss", "state", "steps", "s"):
        t.add_column(col, justify="right")
    for r in sorted(summary["trials"], key=lambda r: (r["state"] != "complete", r["value"] or 1e9)):
        best = r["trial"] == summary["best"]["trial"]
        t.add_row(
            ("* " if best else "") + str(r["trial"]),
            *[f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys],
            "—" if r["value"] is None else f"{r['value']:.4f}",
            r["state"],
            str(r["steps"]),
            f"{r['seconds']:.0f}",
        )
    console.print(t)


def plot_sweep(summary: dict[str, Any], keys: list[str], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = summary["trials"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in trials:
        if r["value"] is None:
            continue
        done = r["state"] == "complete"
        a.scatter(r["trial"], r["value"], marker="o" if done else "x", color="C0" if done else "C3")
        b.plot(
            range(1, len(r["val_curve"]) + 1),
            r["val_curve"],
            color="C0" if done else "C3",
            marker="o" if done else "x",
            markersize=3 if done else 6,
            alpha=0.7,
        )
    best = summary["best"]
    a.scatter(best["trial"], best["value"], s=160, facecolors="none", edgecolors="C2", label="best")
    a.xaxis.get_major_locator().set_params(integer=True)
    b.xaxis.get_major_locator().set_params(integer=True)
    a.set_xlabel("trial")
    a.set_ylabel("best validation loss")
    a.set_title("objective per trial (x = pruned)")
    a.legend()
    b.set_xlabel("evaluation")
    b.set_ylabel("validation loss")
    b.set_title("validation curves (red = pruned)")
    fig.suptitle(
        "best: "
        + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items()
        ),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
