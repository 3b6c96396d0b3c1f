"""Fine-tune, prompt, or retrieve? The four answers to the same held-out questions, side by side.

On a tuned run's test split:
- prompting, zero-shot: the base model, the question alone;
- prompting, few-shot: the base model with k solved training examples in the prompt;
- RAG: the base model with the top-k passages retrieved by all-MiniLM-L6-v2 — solved training examples (shown
  as worked examples) or paragraphs of a documents folder (given as context);
- fine-tuned: the run's model, the question alone.

Each is scored with the same metrics (eval/metrics.py), timed per request (retrieval included for RAG), and
charged its prompt tokens per request and its one-off cost (training time; embedding the corpus for RAG). The
recommendation takes the options within `tolerance` points of the best quality and picks the one that needs no
training and answers fastest — or fine-tuning, when only it reaches that quality, or when it is so much cheaper
per request that the training time is paid back after N requests (N is in the reason).
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

from tuneforge.data.schema import Example, Message
from tuneforge.data.tokenize import conversation, label_set
from tuneforge.errors import TuneforgeError
from tuneforge.eval.compare import Variant, pick_shots, run_variant, with_shots
from tuneforge.experiments import rag
from tuneforge.models.load import LoadedModel
from tuneforge.recipes.runs import load_any, saved_splits
from tuneforge.rundir import RunDir

TRAINING = {"fine_tuned"}


def primary_metric(headline: dict[str, float], task: str, wanted: str | None = None) -> str:
    if wanted:
        if wanted not in headline:
            raise TuneforgeError(
                f"metric {wanted!r} is not reported for this task", f"choose one of: {', '.join(headline)}"
            )
        return wanted
    if task == "label" and "accuracy (strict)" in headline:
        return "accuracy (strict)"
    if task == "text" and "ROUGE-L" in headline:
        return "ROUGE-L"
    return "exact match (strict)"


def rag_rewrite(index: rag.Index, examples: list[Example], k: int, data_cfg, labels):
    """A per-question prompt builder with that question's top-k passages; returns (rewrite, seconds spent)."""
    t0 = time.time()
    hits = index.search([rag.query_text(e) for e in examples], k)
    seconds = time.time() - t0
    by_id = {id(e): h for e, h in zip(examples, hits, strict=True)}

    def rewrite(ex: Example, prompt: list[Message]) -> list[Message]:
        found = by_id[id(ex)]
        if found and found[0][0].example is not None:  # solved examples: shown as worked examples
            # Most similar last, nearest to the question.
            return with_shots(prompt, [conversation(p.example, data_cfg, labels) for p, _ in reversed(found)])
        context = "Use these passages if they help:\n" + "\n".join(
            f"[{i + 1}] {p.text}" for i, (p, _) in enumerate(found)
        )
        system = [m for m in prompt if m.role == "system"]
        rest = [m for m in prompt if m.role != "system"]
        text = (system[0].content + "\n\n" + context) if system else context
        return [Message("system", text)] + rest

    return rewrite, seconds


def decide(
    run_dir: str | Path,
    *,
    docs: str | Path | None = None,
    few_shot: int = 3,
    k: int = 3,
    max_examples: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    metric: str | None = None,
    tolerance: float = 2.0,
    leakage: bool = True,
    seed: int = 0,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The four options — prompting zero- and few-shot, RAG, the fine-tuned run — on the run's test split, with
    quality, latency, prompt size and one-off cost, and a recommendation."""
    from tuneforge.config import EvalConfig

    tuned, base, train, test, rcfg = _models_and_splits(Path(run_dir), max_examples)
    run_dir = Path(run_dir)
    shared = base is tuned
    labels = label_set(list(train) + list(test))
    ecfg = EvalConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, few_shot=few_shot)

    t0 = time.time()
    passages = rag.document_passages(docs) if docs else rag.example_passages(train)
    index = rag.Index.build(passages)
    index_seconds = time.time() - t0
    rewrite, search_seconds = rag_rewrite(index, test, k, rcfg.data, labels)
    rag_title = f"RAG, top-{k} {'document passages' if docs else 'training examples'}"
    shots = pick_shots(train, few_shot, seed)
    variants = [
        Variant("zero_shot", "prompting, zero-shot", base, adapters=not shared),
        *(
            [Variant("few_shot", f"prompting, {few_shot}-shot", base, not shared, shots)]
            if few_shot > 0
            else []
        ),
        Variant("rag", rag_title, base, adapters=not shared, rewrite=rewrite),
        Variant("fine_tuned", "fine-tuned", tuned, adapters=True),
    ]
    results = [run_variant(v, test, rcfg.data, ecfg, labels) for v in variants]
    train_info = _training_info(run_dir)
    task = results[0]["metrics"]["task"]
    key = primary_metric(results[0]["headline"], task, metric)
    one_off = {"rag": index_seconds, "fine_tuned": float(train_info.get("train_seconds") or 0.0)}
    rows = [_option(r, key, one_off, 1000 * search_seconds / len(test)) for r in results]
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "base_model": base.name,
        "n_test": len(test),
        "task": task,
        "metric": key,
        "tolerance": tolerance,
        "retrieval": {
            "corpus": str(docs) if docs else "training split",
            "passages": len(passages),
            "k": k,
            "embedder": rag.EMBEDDING_PACKAGE,
        },
        "training": train_info,
        "options": rows,
        "samples": [
            {"reference": ex.answer(), **{r["key"]: r["answers"][i] for r in results}}
            for i, ex in enumerate(test[:5])
        ],
    }
    report["recommendation"] = recommend(rows, tolerance, key)
    if leakage:
        report["leakage"] = _leakage(tuned, train, test, rcfg.data)
    if out_dir:
        write_decision(report, Path(out_dir))
    return report


def _leakage(tuned: LoadedModel, train: list, test: list, data_cfg: Any) -> dict[str, Any]:
    from tuneforge.experiments.leakage import leakage_report, verdict

    lk = leakage_report(tuned, train, test, data_cfg, max_examples=min(100, len(test) * 2))
    return {**lk, "verdict": verdict(lk)}


def _models_and_splits(run_dir: Path, max_examples: int | None) -> tuple:
    """(tuned, base, train, test, run config) of a tuned run; the base is the tuned model itself (adapters off)
    when the run is an adapter."""
    if not run_dir.is_dir():
        raise TuneforgeError(f"run folder {run_dir} does not exist", "train first: `tuneforge train CONFIG`")
    tuned = load_any(str(run_dir))
    if tuned.run_dir is None:
        raise TuneforgeError(f"{run_dir} is not a tuneforge run", "pass the folder `tuneforge train` wrote")
    train, _val, test, rcfg = saved_splits(run_dir)
    if not test:
        raise TuneforgeError(f"run {run_dir} has no test split", "train with data.split.test > 0")
    if max_examples:
        test = test[:max_examples]
    shared = getattr(tuned.model, "peft_config", None) is not None
    base: LoadedModel = tuned if shared else load_any(rcfg.model.name, chat_template=rcfg.model.chat_template)
    return tuned, base, train, test, rcfg


def _option(result: dict[str, Any], key: str, one_off: dict[str, float], search_ms: float) -> dict[str, Any]:
    """One option's row: quality on the metric, latency per request (retrieval included), tokens, one-off cost."""
    ms = result["ms_per_example"] + (search_ms if result["key"] == "rag" else 0.0)
    return {
        "key": result["key"],
        "title": result["title"],
        "quality": result["headline"][key],
        "headline": result["headline"],
        "ms_per_request": ms,
        "prompt_tokens": result["prompt_tokens_mean"],
        "completion_tokens": result["completion_tokens_mean"],
        "one_off_seconds": one_off.get(result["key"], 0.0),
    }


def _training_info(run_dir: Path) -> dict[str, Any]:
    return RunDir(run_dir).read_done()


def recommend(rows: list[dict[str, Any]], tolerance: float, metric: str) -> dict[str, Any]:
    best = max(r["quality"] for r in rows)
    close = [r for r in rows if r["quality"] >= best - tolerance]
    ft = next((r for r in rows if r["key"] in TRAINING), None)
    free = sorted((r for r in close if r["key"] not in TRAINING), key=lambda r: r["ms_per_request"])
    if not free:
        alt = max((r for r in rows if r["key"] not in TRAINING), key=lambda r: r["quality"])
        reason = (
            f"fine-tuning reaches {ft['quality']:.1f} {metric}, {ft['quality'] - alt['quality']:.1f} points above "
            f"the best alternative ({alt['title']}, {alt['quality']:.1f}), with "
            f"{ft['prompt_tokens']:.0f} instead of {alt['prompt_tokens']:.0f} prompt tokens and "
            f"{ft['ms_per_request']:.0f} instead of {alt['ms_per_request']:.0f} ms per request; "
            f"it cost {ft['one_off_seconds']:.0f} s of training once"
        )
        return {"choice": ft["key"], "title": ft["title"], "reason": reason}
    pick = free[0]
    top = max(rows, key=lambda r: r["quality"])
    if pick is top:
        reason = f"{pick['title']} reaches the best {metric}, {pick['quality']:.1f}"
        if ft is not None:
            reason += f" (fine-tuned: {ft['quality']:.1f})"
    else:
        reason = (
            f"{pick['title']} reaches {pick['quality']:.1f} {metric}, within {tolerance:g} points of the best "
            f"({top['title']}, {best:.1f})"
        )
    reason += f", with no training, at {pick['prompt_tokens']:.0f} prompt tokens and {pick['ms_per_request']:.0f} ms per request"
    if ft is not None and ft is not pick:
        reason += f" (fine-tuned: {ft['prompt_tokens']:.0f} and {ft['ms_per_request']:.0f} ms)"
    if ft is not None and ft in close and ft["ms_per_request"] < pick["ms_per_request"]:
        saved = (pick["ms_per_request"] - ft["ms_per_request"]) / 1000
        n = ft["one_off_seconds"] / max(saved, 1e-9)
        reason += (
            f"; the fine-tuned model answers {pick['ms_per_request'] / max(ft['ms_per_request'], 1e-9):.1f}x "
            f"faster, so fine-tuning pays back its {ft['one_off_seconds']:.0f} s of training after about "
            f"{n:,.0f} requests — choose it if you expect more"
        )
        return {"choice": pick["key"], "title": pick["title"], "reason": reason, "break_even_requests": n}
    return {"choice": pick["key"], "title": pick["title"], "reason": reason}


# ------------------------------------------------------------------------------------------------- output
def markdown(report: dict[str, Any]) -> str:
    m = report["metric"]
    lines = [
        f"# Fine-tune, prompt or retrieve? — {report['run_dir']}",
        "",
        f"{report['n_test']} held-out test questions, base model {report['base_model']}, task {report['task']}; "
        f"retrieval over {report['retrieval']['corpus']} ({report['retrieval']['passages']} passages).",
        "",
        f"| option | {m} | ms / request | prompt tokens / request | one-off cost (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in report["options"]:
        lines.append(
            f"| {r['title']} | {r['quality']:.1f} | {r['ms_per_request']:.0f} | {r['prompt_tokens']:.0f} | "
            f"{r['one_off_seconds']:.0f} |"
        )
    keys = list(report["options"][0]["headline"])
    lines += ["", "| metric (0-100) | " + " | ".join(r["title"] for r in report["options"]) + " |"]
    lines.append("| --- |" + " ---: |" * len(report["options"]))
    for k in keys:
        vals = " | ".join(f"{r['headline'].get(k, float('nan')):.1f}" for r in report["options"])
        lines.append(f"| {k} | {vals} |")
    rec = report["recommendation"]
    lines += ["", f"**Recommendation: {rec['title']}** — {rec['reason']}."]
    lk = report.get("leakage")
    if lk:
        lines += [
            "",
            "## Training-data leakage",
            "",
            f"Prefix: {lk['prefix']}.",
            "",
            "| asked | examples | reproduced verbatim (%) | share of suffix reproduced (%) |",
            "| --- | ---: | ---: | ---: |",
        ]
        for key, title in (
            ("tuned_train", "tuned, training examples"),
            ("tuned_test", "tuned, unseen test examples"),
            ("base_train", "base, training examples"),
        ):
            if key in lk:
                lines.append(
                    f"| {title} | {lk[key]['n']} | {lk[key]['extracted']:.1f} | {lk[key]['share']:.1f} |"
                )
        lines += ["", f"Verdict: {lk['verdict']}."]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opts = report["options"]
    names = [textwrap.fill(o["title"].replace(",", ""), 14) for o in opts]
    colors = ["#8da0cb" if o["key"] not in TRAINING else "#fc8d62" for o in opts]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [
        ("quality", f"{report['metric']} (higher is better)", "{:.1f}"),
        ("ms_per_request", "latency per request, ms", "{:.0f}"),
        ("prompt_tokens", "prompt tokens per request", "{:.0f}"),
    ]
    for ax, (key, title, fmt) in zip(axes, panels, strict=True):
        vals = [o[key] for o in opts]
        bars = ax.bar(range(len(opts)), vals, color=colors)
        ax.set_xticks(range(len(opts)), names, fontsize=8)
        ax.set_title(title, fontsize=10)
        for b, v in zip(bars, vals, strict=True):
            ax.annotate(
                fmt.format(v),
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    rec = report["recommendation"]
    fig.suptitle(f"Recommendation: {rec['title']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_decision(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "decide.json", "md": out_dir / "decide.md", "png": out_dir / "decide.png"}
    paths["json"].write_text(json.dumps(report, indent=1, default=str))
    paths["md"].write_text(markdown(report))
    plot(report, paths["png"])
    return paths


def print_decision(report: dict[str, Any], console) -> None:
    from rich.table import Table

    t = Table(title=f"Fine-tune, prompt or retrieve? ({report['n_test']} held-out questions)")
    for col in (
        "option",
        report["metric"],
        "ms / request",
        "prompt tokens / request",
        "one-off cost (s)",
    ):
        t.add_column(col, justify="left" if col == "option" else "right")
    for r in report["options"]:
        t.add_row(
            r["title"],
            f"{r['quality']:.1f}",
            f"{r['ms_per_request']:.0f}",
            f"{r['prompt_tokens']:.0f}",
            f"{r['one_off_seconds']:.0f}",
        )
    console.print(t)
    rec = report["recommendation"]
    console.print(f"[bold]Recommendation: {rec['title']}[/] — {rec['reason']}.")
    if report.get("leakage"):
        console.print(f"Leakage check: {report['leakage']['verdict']}.")
