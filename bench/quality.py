"""Defaults on data nobody tuned for: how close a run with every default comes to the best of a small grid.

    .venv/bin/python bench/quality.py --only data                      # build the datasets, print their counts
    .venv/bin/python bench/quality.py --datasets persona --grid 1e-3x3,3e-3x8
    .venv/bin/python bench/quality.py --grid small                    # every dataset, 2 grid points each
    .venv/bin/python bench/quality.py                                  # every dataset, the full 3 x 2 grid
    .venv/bin/python bench/quality.py --resume                         # continue an interrupted suite
    .venv/bin/python bench/quality.py --table                          # the table from the results file

Five datasets that the defaults were not tuned on (built reproducibly by examples/quality/make_data.py):

| dataset | task | score (headline) |
| --- | --- | --- |
| persona | 91 identity.json answers with an invented name and maker ("Nova", "Lumen Labs"); 30 held-out identity questions in new phrasings (data.test) | % of answers naming Nova (and, reported beside it, % naming Lumen Labs on the 12 maker questions) |
| tickets | 300 of examples/data/tickets.jsonl (JSON triage), the library's split (test 0.15) | exact match of the JSON |
| alpaca | 300 alpaca_en_demo records with outputs <= 400 characters + 30 held-out | ROUGE-L (chrF beside it) |
| alpaca_zh | the same from alpaca_zh_demo (outputs <= 100 characters, <= 120 with the prompt) | chrF (character n-grams: right for Chinese) |
| classification | examples/methods/data/tickets-queue.jsonl, a head on minilm-l6 (method classifier) | accuracy |

Language-model datasets train SmolLM2-135M-Instruct with LoRA (its defaults), data.max_length 256, and are scored
on at most 30 test examples, greedy, zero-shot (eval.few_shot 0), with eval.general bundled measuring forgetting.

Per dataset, one run with ALL defaults — the config leaves train.learning_rate, train.epochs and
train.early_stopping_patience unset, so the library resolves them ("auto") and writes what it chose and why under
`resolved` in the run's config.yaml — and a small grid as the reference best: train.learning_rate in
{3e-4, 1e-3, 3e-3} (for the classifier, which trains every weight of the encoder: {3e-5, 1e-4, 3e-4}) x two
epoch counts per dataset ({3, 8} for the ~90-example persona set, {1, 3} for the others). Grid runs change only
those two keys; everything else, early stopping included, stays at its default.

Runs go one after another, each in its own process and run folder under --work; each appends one JSON line to
bench/results/quality.jsonl (dataset, kind, lr, epochs, what `auto` resolved to, the task score, the general-loss
change, steps, seconds, stopped early), so `--resume` skips the runs already there. The table per dataset: the
default's score, the grid's best (with its lr x epochs), default / best, the default run's general-perplexity
change exp(tuned_general_loss - base_general_loss) - 1 (positive: the model forgot some general ability) and
its time.

Each run's log (stamped with its elapsed seconds: where the time goes) and config are beside its run folder.
--set KEY=VALUE goes to every run's config (a smoke test: --set train.max_steps=2 --results /tmp/q.jsonl);
results lines record it, and --resume and --table only match lines with the same --set.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "quality.jsonl"
MAKE_DATA = REPO / "examples" / "quality" / "make_data.py"
DATA = REPO / "examples" / "quality" / "data"
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

LM_LRS = (3e-4, 1e-3, 3e-3)
# The classifier trains all of a 22M encoder's weights and a fresh head: full fine-tuning wants rates ~10x below
# LoRA's (examples/methods/classifier-minilm.yaml uses 1e-4).
CLASSIFIER_LRS = (3e-5, 1e-4, 3e-4)
TEST_EXAMPLES = 30


def make_data() -> Any:
    spec = importlib.util.spec_from_file_location("quality_make_data", MAKE_DATA)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------------ datasets
def lm_config(
    train: Path, test: Path | None, *, split_test: float, max_new_tokens: int, metrics: list[str]
) -> dict[str, Any]:
    """A language-model run that leaves every training hyperparameter to the library."""
    data: dict[str, Any] = {"train": str(train), "split": {"test": split_test}, "max_length": 256}
    if test is not None:
        data["test"] = str(test)
    return {
        "seed": 0,
        "model": {"name": "smollm2-135m"},
        "method": {"name": "lora"},
        "data": data,
        "eval": {
            "max_new_tokens": max_new_tokens,
            "few_shot": 0,
            "samples": 0,
            "max_examples": TEST_EXAMPLES,
            "general": "bundled",
            "metrics": metrics,
        },
    }


def lm_scores(report: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(tuned, base zero-shot) headline rows of the report, 0-100."""
    return report["variants"][-1]["headline"], report["variants"][0]["headline"]


def persona_scores(report: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Does the answer name the persona? Over every question whose reference names it, and (the maker) over the
    maker questions — those whose reference names the maker (examples/quality/make_data.py writes them so)."""
    md = make_data()
    name, author = md.NAME.lower(), md.AUTHOR.lower()
    rows = report["answers"]
    out = []
    for key in ("tuned", "base"):
        who = [r for r in rows if name in (r["reference"] or "").lower()]
        maker = [r for r in rows if author in (r["reference"] or "").lower()]
        s = dict(report["variants"][-1 if key == "tuned" else 0]["headline"])
        s["names the persona %"] = 100 * sum(name in (r[key] or "").lower() for r in who) / max(len(who), 1)
        s["names the maker % (maker questions)"] = (
            100 * sum(author in (r[key] or "").lower() for r in maker) / max(len(maker), 1)
        )
        s["n_persona"], s["n_maker"] = len(who), len(maker)
        out.append(s)
    return out[0], out[1]


def classifier_scores(report: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    def rows(m: dict[str, Any]) -> dict[str, float]:
        return {"accuracy": 100 * m["accuracy"], "macro-F1": 100 * m["macro_f1"]}

    return rows(report["variants"][-1]["metrics"]), rows(report["variants"][0]["metrics"])


@dataclass
class Dataset:
    name: str
    metric: str  # the headline row of `score`'s result
    epochs: tuple[float, float]  # the grid's two epoch counts
    lrs: tuple[float, ...]
    config: Callable[[dict[str, Path]], dict[str, Any]]  # the default run's config from the data files
    score: Callable[[dict[str, Any]], tuple[dict[str, float], dict[str, float]]]
    extra: str | None = None  # a second score shown beside the headline


DATASETS = {
    d.name: d
    for d in [
        Dataset(
            "persona",
            "names the persona %",
            (3, 8),
            LM_LRS,
            lambda f: lm_config(
                f["train"], f["test"], split_test=0, max_new_tokens=40, metrics=["rouge_l", "chrf"]
            ),
            persona_scores,
            extra="names the maker % (maker questions)",
        ),
        Dataset(
            "tickets",
            "exact match (strict)",
            (1, 3),
            LM_LRS,
            lambda f: lm_config(f["train"], None, split_test=0.15, max_new_tokens=24, metrics=["auto"]),
            lm_scores,
            extra="valid JSON",
        ),
        Dataset(
            "alpaca",
            "ROUGE-L",
            (1, 3),
            LM_LRS,
            lambda f: lm_config(
                f["train"], f["test"], split_test=0, max_new_tokens=96, metrics=["rouge_l", "chrf"]
            ),
            lm_scores,
            extra="chrF",
        ),
        Dataset(
            "alpaca_zh",
            "chrF",
            (1, 3),
            LM_LRS,
            # Outputs of <= 100 characters run to ~140 SmolLM2 tokens (about 1.4 per Chinese character).
            lambda f: lm_config(
                f["train"], f["test"], split_test=0, max_new_tokens=128, metrics=["chrf", "rouge_l"]
            ),
            lm_scores,
        ),
        Dataset(
            "classification",
            "accuracy",
            (1, 3),
            CLASSIFIER_LRS,
            lambda f: {
                "seed": 0,
                "model": {"name": "minilm-l6"},
                "method": {"name": "classifier"},
                "data": {
                    "train": str(f["train"]),
                    "format": "classification",
                    "split": {"validation": 0.1, "test": 0.15, "stratify": "label"},
                    "max_length": 256,
                },
            },
            classifier_scores,
            extra="macro-F1",
        ),
    ]
}


def data_files() -> dict[str, dict[str, Path]]:
    """Every dataset's files, (re)written: the writers are seeded and cheap, so the files always match them."""
    files: dict[str, dict[str, Any]] = {k: {"test": None, **v} for k, v in make_data().build(DATA).items()}
    files["classification"] = {
        "train": REPO / "examples" / "methods" / "data" / "tickets-queue.jsonl",
        "test": None,
    }
    return files


# -------------------------------------------------------------------------------------------------- the runs
@dataclass
class Run:
    dataset: str
    kind: str  # default | grid
    lr: float | None = None
    epochs: float | None = None

    @property
    def name(self) -> str:
        return "default" if self.kind == "default" else f"lr{self.lr:g}-ep{self.epochs:g}"

    def key(self, sets: list[str]) -> tuple:
        return (self.dataset, self.kind, self.lr, self.epochs, tuple(sets))


def parse_grid(specs: list[str]) -> dict[str | None, list[tuple[float, float]] | str]:
    """--grid values: `LRxEPOCHS,...` for every dataset, `NAME=LRxEPOCHS,...` for one, or `small`."""
    out: dict[str | None, list[tuple[float, float]] | str] = {}
    for spec in specs:
        name, _, points = spec.rpartition("=")
        if name and name not in DATASETS:
            raise SystemExit(f"--grid {spec}: unknown dataset {name} (one of {', '.join(DATASETS)})")
        if points == "small":
            out[name or None] = "small"
            continue
        try:
            out[name or None] = [
                (float(lr), float(ep)) for lr, ep in (p.split("x") for p in points.split(","))
            ]
        except ValueError:
            raise SystemExit(f"--grid {spec}: write points as LRxEPOCHS, e.g. 1e-3x3,3e-3x8") from None
    return out


def grid_points(ds: Dataset, grid: dict) -> list[tuple[float, float]]:
    chosen = grid.get(ds.name, grid.get(None))
    if chosen is None:
        return [(lr, ep) for lr in ds.lrs for ep in ds.epochs]
    if chosen == "small":  # the middle and the highest rate, at the longer of the dataset's epoch counts
        return [(lr, ds.epochs[1]) for lr in ds.lrs[1:]]
    return list(chosen)


def plan(args: argparse.Namespace) -> list[Run]:
    grid = parse_grid(args.grid)
    runs = []
    for name in args.datasets.split(","):
        if name not in DATASETS:
            raise SystemExit(f"--datasets: unknown dataset {name} (one of {', '.join(DATASETS)})")
        ds = DATASETS[name]
        if args.only in ("default", "all"):
            runs.append(Run(name, "default"))
        if args.only in ("grid", "all"):
            runs += [Run(name, "grid", lr, ep) for lr, ep in grid_points(ds, grid)]
    return runs


def run_config(run: Run, files: dict[str, Path]) -> dict[str, Any]:
    cfg = DATASETS[run.dataset].config(files)
    if run.kind == "grid":
        cfg.setdefault("train", {}).update({"learning_rate": run.lr, "epochs": run.epochs})
    return cfg


def commit() -> str:
    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip()

    dirty = git("status", "--porcelain", "--", "src")
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


def run_one(run: Run, files: dict[str, Path], args: argparse.Namespace) -> dict[str, Any] | None:
    """One run in its own process (its memory and any crash are its own); the results line, or None."""
    work = Path(args.work) / run.dataset
    work.mkdir(parents=True, exist_ok=True)
    run_dir = work / run.name
    spec = {
        "dataset": run.dataset,
        "config": {**run_config(run, files), "run_dir": str(run_dir)},
        "set": args.set,
    }
    spec_path, result_path, log = (work / f"{run.name}.{s}" for s in ("spec.json", "result.json", "log"))
    spec_path.write_text(json.dumps(spec, indent=1))
    result_path.unlink(missing_ok=True)
    # Unbuffered, so that each line's time stamp is when it was printed; wide, so that tables stay readable.
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "160",
    }
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(spec_path), "--result", str(result_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for text in proc.stdout:  # each line stamped with the run's elapsed time: where a run spends it
            out.write(f"[{time.time() - t0:6.0f} s] {text}")
            out.flush()
        returncode = proc.wait()
    seconds = time.time() - t0
    if returncode != 0 or not result_path.is_file():
        tail = log.read_text().strip().splitlines()[-15:]
        print(
            f"   FAILED after {seconds:.0f} s (exit {returncode}); log {log}:\n      " + "\n      ".join(tail)
        )
        return None
    res = json.loads(result_path.read_text())
    return {
        "dataset": run.dataset,
        "kind": run.kind,
        "lr": run.lr,
        "epochs": run.epochs,
        **res,
        "seconds": round(seconds, 1),
        "set": args.set,
        "run_dir": str(run_dir),
        "commit": commit(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def child(spec_path: Path, result_path: Path) -> None:
    """Inside the run's process: train and evaluate with the library's own entry point, then score."""
    import yaml

    from tuneforge import api
    from tuneforge.config import apply_overrides
    from tuneforge.rundir import RunDir

    spec = json.loads(spec_path.read_text())
    ds = DATASETS[spec["dataset"]]
    cfg = api.build_config(apply_overrides(spec["config"], spec["set"]), str(spec_path))
    summary = api.finetune(cfg, overwrite=True)
    report = summary["report"]
    if report is None:
        raise SystemExit("the run has no report (no test split, or it was stopped)")
    tuned, base = ds.score(report)
    run = RunDir(cfg.run_dir)
    saved = yaml.safe_load(run.config.read_text())
    resolved = saved.get("resolved") or {}

    def used(key: str) -> Any:  # what the run trained with: the resolved value, else the config's own
        if key in resolved:
            return resolved[key].get("value") if isinstance(resolved[key], dict) else resolved[key]
        section, field = key.split(".")
        return saved.get(section, {}).get(field)

    fg = report.get("forgetting")
    train = summary["train"]
    result = {
        "metric": ds.metric,
        "score": tuned.get(ds.metric),
        "base_score": base.get(ds.metric),
        "scores": tuned,
        "base_scores": base,
        # Relative change of general-data perplexity: exp of the loss difference, minus 1.
        "general_change": math.exp(fg["tuned_loss"] - fg["base_loss"]) - 1 if fg else None,
        "general_loss": {"base": fg["base_loss"], "tuned": fg["tuned_loss"]} if fg else None,
        "resolved": resolved,
        "lr_used": used("train.learning_rate"),
        "epochs_used": used("train.epochs"),
        "patience_used": used("train.early_stopping_patience"),
        "steps": train.get("steps"),
        "best_step": train.get("best_step"),
        "stopped_early": train.get("stopped_early"),
        "train_seconds": train.get("train_seconds"),
        "splits": json.loads(run.splits_marker.read_text()) if run.splits_marker.is_file() else None,
        "n_test_scored": report.get("n_test"),
    }
    result_path.write_text(json.dumps(result, default=str))


# ---------------------------------------------------------------------------------------------- the table
def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _num(v: Any, fmt: str = ".1f") -> str:
    return "—" if v is None else format(v, fmt)


def _lr_ep(r: dict[str, Any]) -> str:
    lr, ep = r.get("lr_used"), r.get("epochs_used")
    lr_s = f"{lr:.3g}" if isinstance(lr, (int, float)) else str(lr)
    ep_s = f"{ep:g}" if isinstance(ep, (int, float)) else str(ep)
    return f"{lr_s} x {ep_s}"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:+.1f}%"


def table(rows: list[dict[str, Any]], sets: list[str]) -> str:
    latest: dict[tuple, dict[str, Any]] = {}
    for r in rows:  # a run repeated later replaces the earlier line
        if r.get("set", []) == sets:
            latest[(r["dataset"], r["kind"], r["lr"], r["epochs"])] = r
    if not latest:
        return "no results" + (f" with --set {' '.join(sets)}" if sets else "") + "\n"
    head = [
        "| dataset | metric | default | default's lr x epochs (auto) | grid best | its lr x epochs | default / best "
        "| general ppl change (default) | default time | grid runs |",
        "| --- | --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    detail = []
    for name, ds in DATASETS.items():
        mine = [r for (d, *_), r in latest.items() if d == name]
        if not mine:
            continue
        default = next((r for r in mine if r["kind"] == "default"), None)
        grid = sorted((r for r in mine if r["kind"] == "grid"), key=lambda r: (r["lr"], r["epochs"]))
        best = max(grid, key=lambda r: r["score"] if r["score"] is not None else -1) if grid else None
        ratio = (
            f"{default['score'] / best['score']:.2f}"
            if default and best and default["score"] is not None and best["score"]
            else "—"
        )
        head.append(
            f"| {name} | {ds.metric} | {_num(default and default['score'])} | {_lr_ep(default) if default else '—'} "
            f"| {_num(best and best['score'])} | {_lr_ep(best) if best else '—'} | {ratio} "
            f"| {_pct(default and default['general_change'])} "
            f"| {_num(default and default['seconds'], '.0f')} s | {len(grid)} |"
        )
        extra = f" | {ds.extra}" if ds.extra else ""
        detail += [
            "",
            f"{name} ({ds.metric}; base model zero-shot: {_num(mine[0].get('base_score'))})",
            "",
            f"| run | lr x epochs | {ds.metric}{extra} | general ppl change | steps | stopped early | seconds |",
            "| --- | --- | ---: |" + (" ---: |" if ds.extra else "") + " ---: | ---: | --- | ---: |",
        ]
        for r in ([default] if default else []) + grid:
            ex = f" | {_num(r['scores'].get(ds.extra))}" if ds.extra else ""
            detail.append(
                f"| {r['kind']} | {_lr_ep(r)} | {_num(r['score'])}{ex} | {_pct(r['general_change'])} "
                f"| {r['steps']} | {'yes' if r['stopped_early'] else 'no'} | {r['seconds']:.0f} |"
            )
        why = (default or {}).get("resolved") or {}
        if why:
            detail += ["", "auto resolved to:"]
            detail += [
                f"- {k}: {v.get('value') if isinstance(v, dict) else v} — {v.get('why', '') if isinstance(v, dict) else ''}"
                for k, v in why.items()
            ]
    return "\n".join(head + detail) + "\n"


# ----------------------------------------------------------------------------------------------- data check
def check_data(files: dict[str, dict[str, Path]], names: list[str]) -> None:
    """Each dataset prepared as its run will prepare it (clean, dedupe, split), and its examples counted against
    data.max_length with the run's own tokenizer — the drops a run would report, without loading a model."""
    from transformers import AutoTokenizer

    from tuneforge.data.prepare import prepare_data, reason_category
    from tuneforge.models.load import base_path_for
    from tuneforge.models.registry import resolve
    from tuneforge.recipes.build import build_config
    from tuneforge.recipes.splits import token_counter

    print(
        "| dataset | file records | train | validation | test (scored) | rejected in cleaning "
        "| over max_length (dropped) | tokens p50 / max |\n| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
    )
    toks: dict[str, Any] = {}
    for name in names:
        f = files[name]
        cfg = build_config({**run_config(Run(name, "default"), f), "run_dir": "/tmp/unused"})
        if cfg.model.name not in toks:
            toks[cfg.model.name] = AutoTokenizer.from_pretrained(str(base_path_for(resolve(cfg.model.name))))
        count = token_counter(cfg, toks[cfg.model.name])
        prep = prepare_data(cfg.data, cfg.seed, count)
        n_file = sum(
            sum(1 for ln in Path(p).read_text().splitlines() if ln.strip())
            for p in f.values()
            if p is not None
        )
        reasons = Counter(reason_category(r.reason) for r in prep.rejects)
        lens = sorted(count(ex) for ex in prep.train + prep.validation + prep.test)
        over = {
            k: sum(count(ex) > cfg.data.max_length for ex in getattr(prep, k))
            for k in ("train", "validation", "test")
        }
        scored = min(len(prep.test), cfg.eval.max_examples or len(prep.test))
        if cfg.method.name == "classifier":
            scored = len(prep.test)  # a classifier's report scores the whole test split
        print(
            f"| {name} | {n_file} | {len(prep.train)} | {len(prep.validation)} | {len(prep.test)} ({scored}) "
            f"| {', '.join(f'{k}: {v}' for k, v in reasons.items()) or 'none'} "
            f"| {over['train']} / {over['validation']} / {over['test']} | {lens[len(lens) // 2]} / {lens[-1]} |"
        )


# ---------------------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: " + ", ".join(DATASETS))
    p.add_argument(
        "--only",
        default="all",
        choices=["all", "default", "grid", "data"],
        help="the default runs, the grid runs, both, or only build and count the datasets",
    )
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="[DATASET=]LRxEPOCHS,...|small",
        help="grid points instead of the full 3 x 2 grid, for every selected dataset or (DATASET=...) for one; "
        "repeatable. E.g. 1e-3x3,3e-3x8, or `small`: the two higher rates of the dataset's own grid at its "
        "longer epoch count (the classifier's rates are 10x lower: give it its own points)",
    )
    p.add_argument("--work", default=str(REPO / "runs" / "quality"), help="where the run folders go")
    p.add_argument("--results", default=str(RESULTS), help="JSON-lines results file (appended to)")
    p.add_argument("--resume", action="store_true", help="skip runs already in the results file")
    p.add_argument("--table", action="store_true", help="print the table from the results file and exit")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run"
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(Path(args.child), Path(args.result))
        return
    results = Path(args.results)
    if args.table:
        print(table(read_results(results), args.set), end="")
        return

    files = data_files()
    if args.only == "data":
        check_data(files, args.datasets.split(","))
        return
    runs = plan(args)
    done = {
        Run(r["dataset"], r["kind"], r["lr"], r["epochs"]).key(r.get("set", []))
        for r in read_results(results)
    }
    if args.resume:
        skipped = [r for r in runs if r.key(args.set) in done]
        runs = [r for r in runs if r.key(args.set) not in done]
        if skipped:
            print(f"--resume: {len(skipped)} run(s) already in {results}")
    results.parent.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    for i, run in enumerate(runs, 1):
        what = "all defaults" if run.kind == "default" else f"lr {run.lr:g} x {run.epochs:g} epochs"
        print(f"== [{i}/{len(runs)}] {run.dataset} {run.kind}: {what}", flush=True)
        line = run_one(run, files[run.dataset], args)
        if line is None:
            continue
        with open(results, "a") as f:
            f.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        print(
            f"   {line['metric']} {_num(line['score'])} (base {_num(line['base_score'])}), lr x epochs {_lr_ep(line)}, "
            f"{line['steps']} steps{' (stopped early)' if line['stopped_early'] else ''}, general ppl change "
            f"{_pct(line['general_change'])}, {line['seconds']:.0f} s",
            flush=True,
        )
    print(f"\n{len(runs)} run(s) in {time.time() - t_all:.0f} s; results in {results}\n")
    print(table(read_results(results), args.set), end="")


if __name__ == "__main__":
    main()
