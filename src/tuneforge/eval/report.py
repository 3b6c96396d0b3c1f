"""The before/after report: a terminal table, report.json, report.html and the loss curve."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def plot_loss(metrics: list[dict[str, Any]], out: Path) -> Path | None:
    """Train loss per step and validation loss per evaluation, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in metrics if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in metrics if "val_loss" in r]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="#4c72b0", alpha=0.85, linewidth=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), label="validation loss", color="#dd8452", marker="o", linewidth=2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title("Training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def print_report(report: dict[str, Any], console: Console) -> None:
    variants = report["variants"]
    title = "Before → after" if "gain" in report else f"{report['base_model']}"
    table = Table(title=f"{title} on {report['n_test']} held-out test examples", show_lines=False)
    table.add_column("metric (0-100)")
    for v in variants:
        table.add_column(v["title"], justify="right")
    if "gain" in report:
        table.add_column("gain", justify="right", style="bold")
    rows = list(variants[0]["headline"])
    for row in rows:
        cells = [_fmt(v["headline"].get(row)) for v in variants]
        if "gain" in report:
            g = report["gain"].get(row)
            style = "green" if g and g > 0 else "red" if g and g < 0 else ""
            cells.append(Text("—" if g is None else f"{g:+.1f}", style=style))
        table.add_row(row, *cells)
    val = report.get("validation") or {}
    if val.get("base") and val.get("tuned"):
        table.add_row(
            "validation loss",
            _fmt2(val["base"]["loss"]),
            *[""] * (len(variants) - 2),
            _fmt2(val["tuned"]["loss"]),
            f"{val['tuned']['loss'] - val['base']['loss']:+.3f}",
        )
    fg = report.get("forgetting")
    if fg:  # forgetting, next to the task gain: loss on general held-out data, base vs tuned
        table.add_row(
            f"general loss ({fg['n_general']} held-out, forgetting)",
            _fmt2(fg["base_loss"]),
            *[""] * (len(variants) - 2),
            _fmt2(fg["tuned_loss"]),
            Text(f"{fg['delta_loss']:+.3f}", style="red" if fg["delta_loss"] > 0.01 else "green"),
        )
    table.add_row(
        "ms per answer",
        *[f"{v['ms_per_example']:.0f}" for v in variants],
        *([""] if "gain" in report else []),
    )
    table.add_row(
        "prompt tokens",
        *[f"{v['prompt_tokens_mean']:.0f}" for v in variants],
        *([""] if "gain" in report else []),
    )
    console.print(table)
    for task, rows in (report.get("tasks") or {}).items():
        head = ", ".join(f"{v['title']} {_fmt(rows[v['key']].get('exact match (strict)'))}" for v in variants)
        console.print(f"  task [bold]{task}[/] ({rows['n']} test examples), exact match: {head}")

    if report.get("samples"):
        st = Table(title="Sample answers", show_lines=True)
        st.add_column("question", max_width=48)
        st.add_column("reference", max_width=30)
        for v in variants:
            st.add_column(v["title"], max_width=30)
        for s in report["samples"]:
            # Model output and user data are text, never rich markup.
            st.add_row(
                Text(_short(s["question"], 220)),
                Text(s["reference"] or ""),
                *[Text(_short(s["answers"][v["key"]], 160)) for v in variants],
            )
        console.print(st)


def _fmt2(v: float) -> str:
    return f"{v:.3f}"


def _short(s: str, n: int) -> str:
    s = s or ""
    return s if len(s) <= n else s[: n - 1] + "…"


def write_report(report: dict[str, Any], run_dir: Path) -> tuple[Path, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    jpath = run_dir / "report.json"
    jpath.write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str))
    hpath = run_dir / "report.html"
    hpath.write_text(render_html(report, run_dir / "loss_curve.png"))
    return jpath, hpath


def render_html(report: dict[str, Any], loss_png: Path | None = None) -> str:
    e = html.escape
    variants = report["variants"]
    head = "".join(f"<th>{e(v['title'])}</th>" for v in variants) + (
        "<th>gain</th>" if "gain" in report else ""
    )
    rows = []
    for row in variants[0]["headline"]:
        cells = "".join(f"<td>{_fmt(v['headline'].get(row))}</td>" for v in variants)
        if "gain" in report:
            g = report["gain"].get(row)
            cls = "pos" if g and g > 0 else "neg" if g and g < 0 else ""
            cells += f"<td class='{cls}'>{'' if g is None else f'{g:+.1f}'}</td>"
        rows.append(f"<tr><td>{e(row)}</td>{cells}</tr>")
    val = report.get("validation") or {}
    val_html = ""
    if val.get("base"):
        parts = [
            f"<li>{e(k)}: loss {v['loss']:.3f}, perplexity {v['perplexity']:.2f}</li>"
            for k, v in val.items()
            if v
        ]
        val_html = "<h2>Validation loss (answer tokens)</h2><ul>" + "".join(parts) + "</ul>"
    fg = report.get("forgetting")
    if fg:
        val_html += (
            f"<h2>Forgetting (general held-out set, {fg['n_general']} examples)</h2><ul>"
            f"<li>base: loss {fg['base_loss']:.3f}, perplexity {fg['base_perplexity']:.2f}</li>"
            f"<li>tuned: loss {fg['tuned_loss']:.3f}, perplexity {fg['tuned_perplexity']:.2f}</li>"
            f"<li>change: loss {fg['delta_loss']:+.3f}, perplexity {fg['perplexity_change_pct']:+.1f}%</li></ul>"
        )
    tasks = report.get("tasks") or {}
    if tasks:
        trs = "".join(
            f"<tr><td>{e(t)} ({r['n']})</td>"
            + "".join(f"<td>{_fmt(r[v['key']].get('exact match (strict)'))}</td>" for v in variants)
            + "</tr>"
            for t, r in tasks.items()
        )
        val_html += f"<h2>Per task: exact match (strict)</h2><table><tr><th>task</th>{head}</tr>{trs}</table>"
    sample_rows = []
    for s in report.get("samples", []):
        answers = "".join(f"<td><pre>{e(s['answers'][v['key']] or '')}</pre></td>" for v in variants)
        sample_rows.append(
            f"<tr><td><pre>{e(s['question'])}</pre></td><td><pre>{e(s['reference'] or '')}</pre></td>{answers}</tr>"
        )
    img = ""
    if loss_png is not None and loss_png.is_file():
        data = base64.b64encode(loss_png.read_bytes()).decode()
        img = f"<h2>Loss curve</h2><img alt='loss curve' src='data:image/png;base64,{data}'>"
    confusion = _confusions_html(variants[-1])
    training = report.get("training") or {}
    train_html = ""
    if training:
        train_html = (
            "<h2>Training</h2><ul>"
            + "".join(f"<li>{e(str(k))}: {e(str(v))}</li>" for k, v in training.items())
            + "</ul>"
        )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tuneforge report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}}td:first-child,th:first-child{{text-align:left}}
pre{{white-space:pre-wrap;margin:0;text-align:left;font-size:12px;max-width:380px}}.pos{{color:#080;font-weight:bold}}.neg{{color:#b00}}</style>
</head><body><h1>Before → after</h1>
<p>Base model <b>{e(str(report.get("base_model")))}</b>, tuned <b>{e(str(report.get("tuned_model")))}</b>,
{report["n_test"]} held-out test examples, task type <b>{e(str(report.get("task")))}</b>.
Strict scores read the answer as a program would; lenient ones accept the right answer anywhere in the reply.</p>
<table><tr><th>metric (0-100)</th>{head}</tr>{"".join(rows)}</table>
{val_html}{train_html}{img}{confusion}
<h2>Sample answers</h2><table><tr><th>question</th><th>reference</th>{"".join(f"<th>{e(v['title'])}</th>" for v in variants)}</tr>
{"".join(sample_rows)}</table></body></html>"""


def _confusions_html(v: dict[str, Any]) -> str:
    e = html.escape
    m = v["metrics"]
    blocks = []
    groups = [(f"{k} (strict)", f["strict"]) for k, f in m.get("fields", {}).items()]
    if "labels" in m:
        groups.append(("label (strict)", m["labels"]["strict"]))
    for name, sc in groups:
        labs = sc["confusion"]["labels"]
        head = "".join(f"<th>{e(x)}</th>" for x in labs)
        body = "".join(
            f"<tr><th>{e(labs[i])}</th>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
            for i, row in enumerate(sc["confusion"]["matrix"])
        )
        blocks.append(
            f"<h3>{e(v['title'])}: {e(name)} — rows true, columns predicted</h3><table><tr><th></th>{head}</tr>{body}</table>"
        )
    return ("<h2>Confusion matrices</h2>" + "".join(blocks)) if blocks else ""


# ------------------------------------------------------------------------------------ classification heads
def print_classification_report(report: dict[str, Any], console: Console) -> None:
    """Accuracy and macro-F1 of the majority baseline and the classifier, then per-class figures."""
    base, tuned = report["variants"][0], report["variants"][-1]
    t = Table(title=f"Classification on {report['n_test']} held-out test texts")
    t.add_column("metric (0-100)")
    for v in (base, tuned):
        t.add_column(v["title"], justify="right")
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
        t.add_row(key, *[_fmt(100 * v["metrics"][key]) for v in (base, tuned)])
    console.print(t)
    pc = Table(title="Per class (tuned)")
    for col in ("label", "precision", "recall", "F1", "support"):
        pc.add_column(col, justify="right" if col != "label" else "left")
    for lab, m in tuned["metrics"]["per_class"].items():
        pc.add_row(
            Text(lab),
            _fmt(100 * m["precision"]),
            _fmt(100 * m["recall"]),
            _fmt(100 * m["f1"]),
            str(m["support"]),
        )
    console.print(pc)


def write_classification_report(report: dict[str, Any], run_dir: Path) -> tuple[Path, Path]:
    """report.json and report.html (metrics, per-class table, confusion matrix) for a classification run."""
    e = html.escape
    run_dir.mkdir(parents=True, exist_ok=True)
    jpath = run_dir / "report.json"
    jpath.write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str))
    base, tuned = report["variants"][0], report["variants"][-1]
    rows = "".join(
        f"<tr><td>{k}</td>"
        + "".join(f"<td>{100 * v['metrics'][k]:.1f}</td>" for v in (base, tuned))
        + "</tr>"
        for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1")
    )
    per = "".join(
        f"<tr><td>{e(lab)}</td><td>{100 * m['precision']:.1f}</td><td>{100 * m['recall']:.1f}</td>"
        f"<td>{100 * m['f1']:.1f}</td><td>{m['support']}</td></tr>"
        for lab, m in tuned["metrics"]["per_class"].items()
    )
    tuned = {**tuned, "metrics": {"labels": {"strict": tuned["metrics"]}}}
    img = ""
    loss_png = run_dir / "loss_curve.png"
    if loss_png.is_file():
        img = f"<h2>Loss curve</h2><img alt='loss curve' src='data:image/png;base64,{base64.b64encode(loss_png.read_bytes()).decode()}'>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tuneforge classification report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}</style>
</head><body><h1>Classification report</h1>
<p>Base model <b>{e(str(report.get("base_model")))}</b>, {report["n_test"]} held-out test texts,
labels: {e(", ".join(report["labels"]))}.</p>
<table><tr><th>metric (0-100)</th><th>{e(base["title"])}</th><th>{e(tuned["title"])}</th></tr>{rows}</table>
<h2>Per class</h2><table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{per}</table>
{_confusions_html(tuned)}{img}</body></html>"""
    hpath = run_dir / "report.html"
    hpath.write_text(page)
    return jpath, hpath
