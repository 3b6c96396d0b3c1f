"""eval/report.py: report.json and report.html (metrics, gains, validation and forgetting figures, per-task
table, confusion matrix, embedded loss curve, HTML-escaped sample answers), the loss-curve PNG, the terminal
tables rendered into a recording rich Console, the classification report, and a report of a real comparison
on the tiny model.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import re

import pytest
import torch
from rich.console import Console

from tuneforge.config import DataConfig, EvalConfig
from tuneforge.data.schema import Example, Message
from tuneforge.eval import metrics as M
from tuneforge.eval.compare import compare, general_loss_report, per_task
from tuneforge.eval.report import (
    plot_loss,
    print_classification_report,
    print_report,
    write_classification_report,
    write_report,
)
from tuneforge.models.load import load_model

SCRIPT = "<script>alert(1)</script>"
MARKUP = "[bold]hi[/bold]"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chat(question: str, answer: str, **meta) -> Example:
    return Example("chat", [Message("user", question), Message("assistant", answer)], meta=meta)


def variant(key: str, title: str, refs: list[str], preds: list[str], ms: float, prompt_tokens: float) -> dict:
    scores = M.score(refs, preds)
    return {
        "key": key,
        "title": title,
        "metrics": scores,
        "headline": M.headline(scores),
        "answers": preds,
        "seconds": ms * len(refs) / 1000,
        "ms_per_example": ms,
        "prompt_tokens_mean": prompt_tokens,
        "completion_tokens_mean": 2.0,
        "shots": 0,
    }


@pytest.fixture
def report() -> dict:
    """A before/after report shaped as eval.compare.compare returns it, on a small label task."""
    test = [
        chat("Is <b>this</b> good?", "positive", task="reviews"),
        chat("Awful. [bold]Really[/bold].", "negative", task="reviews"),
        chat("It is a phone.", "neutral", task="tickets"),
        chat("Love it & more", "positive", task="tickets"),
    ]
    refs = [e.answer() for e in test]
    results = [
        variant("base", "base (zero-shot)", refs, ["negative", "negative", MARKUP, "neutral"], 12.0, 31.0),
        variant("tuned", "tuned", refs, ["positive", "negative", SCRIPT, "negative"], 8.0, 31.0),
    ]
    before, after = results[0]["headline"], results[-1]["headline"]
    return {
        "base_model": "tiny-llama",
        "tuned_model": "runs/tiny-lora",
        "n_test": len(test),
        "task": results[0]["metrics"]["task"],
        "variants": [{k: v for k, v in r.items() if k != "answers"} for r in results],
        "validation": {
            "base": {"loss": 2.5, "perplexity": 12.18},
            "tuned": {"loss": 1.25, "perplexity": 3.49},
        },
        "samples": [
            {
                "where": f"test #{i + 1}",
                "question": e.messages[0].content,
                "reference": e.answer(),
                "answers": {r["key"]: r["answers"][i] for r in results},
            }
            for i, e in enumerate(test[:3])
        ],
        "answers": [
            {"reference": e.answer(), **{r["key"]: r["answers"][i] for r in results}}
            for i, e in enumerate(test)
        ],
        "gain": {k: after[k] - before[k] for k in after if k in before},
        "tasks": per_task(test, results, EvalConfig()),
        "forgetting": general_loss_report(
            {"loss": 2.0, "perplexity": 7.389}, {"loss": 2.125, "perplexity": 8.373}, 7
        ),
        "training": {"method": "lora", "steps": 12},
    }


def cells(page: str) -> list[str]:
    return re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", page, re.S)


# ------------------------------------------------------------------------------------------- write_report
def test_write_report_json_and_html_carry_the_metrics(report, tmp_path):
    jpath, hpath = write_report(report, tmp_path / "run")
    assert (jpath, hpath) == (tmp_path / "run" / "report.json", tmp_path / "run" / "report.html")
    assert json.loads(jpath.read_text()) == report
    page = hpath.read_text()
    base, tuned = report["variants"]
    assert tuned["headline"]["accuracy (strict)"] == 50.0 and base["headline"]["accuracy (strict)"] == 25.0
    for row, value in tuned["headline"].items():  # one table row per headline metric, gain last
        g = report["gain"][row]
        row_html = (
            f"<tr><td>{html.escape(row)}</td><td>{base['headline'][row]:.1f}</td><td>{value:.1f}</td>"
            f"<td class='{'pos' if g > 0 else 'neg' if g < 0 else ''}'>{g:+.1f}</td></tr>"
        )
        assert row_html in page
    assert "<td class='pos'>+25.0</td>" in page  # accuracy (strict): 25 -> 50
    assert "base: loss 2.500, perplexity 12.18" in page and "tuned: loss 1.250, perplexity 3.49" in page
    assert "Forgetting (general held-out set, 7 examples)" in page
    assert "change: loss +0.125, perplexity +13.3%" in page
    assert "<tr><td>reviews (2)</td><td>50.0</td><td>100.0</td></tr>" in page  # per task, exact match
    assert "<tr><td>tickets (2)</td><td>0.0</td><td>0.0</td></tr>" in page
    assert "<li>method: lora</li>" in page and "<li>steps: 12</li>" in page
    # the tuned model's confusion matrix: rows true, columns predicted, the unreadable answer as <none>
    assert "tuned: label (strict) — rows true, columns predicted" in page
    head = "<tr><th></th><th>negative</th><th>neutral</th><th>positive</th><th>&lt;none&gt;</th></tr>"
    assert head in page
    assert "<tr><th>positive</th><td>1</td><td>0</td><td>1</td><td>0</td></tr>" in page
    assert "<tr><th>neutral</th><td>0</td><td>0</td><td>0</td><td>1</td></tr>" in page
    assert "<img" not in page  # no loss curve in the run folder


def test_report_html_escapes_answers_and_questions(report, tmp_path):
    page = write_report(report, tmp_path)[1].read_text()
    assert SCRIPT not in page and "<b>this</b>" not in page
    assert f"<td><pre>{html.escape(SCRIPT)}</pre></td>" in page
    assert "<td><pre>Is &lt;b&gt;this&lt;/b&gt; good?</pre></td>" in page
    assert f"<pre>{html.escape(MARKUP)}</pre>" in page
    n_samples = sum(1 for c in cells(page) if c.startswith("<pre>")) // (2 + len(report["variants"]))
    assert n_samples == len(report["samples"])


def test_plot_loss_and_the_embedded_curve(report, tmp_path):
    rows = [{"step": s, "loss": 3.0 - 0.1 * s, "lr": 1e-3} for s in range(1, 11)]
    rows += [{"step": 5, "val_loss": 2.7}, {"step": 10, "val_loss": 2.4}]
    png = tmp_path / "loss_curve.png"
    assert plot_loss(rows, png) == png
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    page = write_report(report, tmp_path)[1].read_text()
    embedded = re.search(r"src='data:image/png;base64,([^']+)'", page)
    assert embedded and base64.b64decode(embedded.group(1)) == data
    only_val = tmp_path / "val.png"
    assert plot_loss(rows[-2:], only_val) == only_val and only_val.read_bytes().startswith(PNG_MAGIC)
    for nothing in ([], [{"step": 1, "lr": 1e-3}]):  # nothing to plot: no file
        assert plot_loss(nothing, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


# ------------------------------------------------------------------------------------------- print_report
def test_print_report_renders_metrics_gain_and_samples(report):
    console = Console(record=True, width=300, color_system=None)
    print_report(report, console)
    text = console.export_text()
    assert "Before → after on 4 held-out test examples" in text
    base, tuned = report["variants"]
    for row, value in tuned["headline"].items():
        line = next(ln for ln in text.splitlines() if f"│ {row} " in ln)
        assert f"{base['headline'][row]:.1f}" in line and f"{value:.1f}" in line
        assert f"{report['gain'][row]:+.1f}" in line
    val = next(ln for ln in text.splitlines() if "validation loss" in ln)
    assert "2.500" in val and "1.250" in val and "-1.250" in val
    fg = next(ln for ln in text.splitlines() if "general loss (7 held-out, forgetting)" in ln)
    assert "2.000" in fg and "2.125" in fg and "+0.125" in fg
    assert re.search(r"ms per answer\s*│\s*12\s*│\s*8\b", text)
    assert "task reviews (2 test examples), exact match: base (zero-shot) 50.0, tuned 100.0" in text
    assert "Sample answers" in text
    # answers and questions are shown as text, never read as rich markup
    assert SCRIPT in text and MARKUP in text and "Awful. [bold]Really[/bold]." in text


def test_print_report_of_a_lone_model(report):
    lone = {k: v for k, v in report.items() if k not in ("gain", "forgetting", "tasks")}
    lone["variants"] = report["variants"][:1]
    lone["validation"] = {}
    console = Console(record=True, width=200, color_system=None)
    print_report(lone, console)
    text = console.export_text()
    assert "tiny-llama on 4 held-out test examples" in text
    assert "gain" not in text and "validation loss" not in text and "forgetting" not in text


# ----------------------------------------------------------------------------------------- classification
@pytest.fixture
def classification() -> dict:
    labels = ["Q&A", "billing", "other"]
    truth = ["Q&A", "billing", "billing", "other", "Q&A", "other"]
    pred = ["Q&A", "billing", "other", "other", "billing", "other"]
    return {
        "task": "classification",
        "labels": labels,
        "n_test": len(truth),
        "variants": [
            {
                "key": "majority",
                "title": "majority class (billing)",
                "metrics": M.classification_scores(truth, ["billing"] * len(truth), labels),
            },
            {
                "key": "tuned",
                "title": "tuned classifier",
                "metrics": M.classification_scores(truth, pred, labels),
            },
        ],
        "gain": {"accuracy": 100 * (4 / 6 - 2 / 6)},
        "base_model": "tiny-llama",
    }


def test_print_classification_report(classification):
    console = Console(record=True, width=200, color_system=None)
    print_classification_report(classification, console)
    text = console.export_text()
    assert "Classification on 6 held-out test texts" in text
    acc = next(ln for ln in text.splitlines() if "│ accuracy" in ln)
    assert "33.3" in acc and "66.7" in acc  # majority 2/6, classifier 4/6
    per_class = classification["variants"][1]["metrics"]["per_class"]
    for lab, m in per_class.items():
        line = next(ln for ln in text.splitlines() if f"│ {lab} " in ln)
        assert f"{100 * m['precision']:.1f}" in line and f"{100 * m['f1']:.1f}" in line
        assert line.rstrip(" │").endswith(str(m["support"]))


def test_write_classification_report_has_the_confusion_matrix(classification, tmp_path):
    jpath, hpath = write_classification_report(classification, tmp_path / "clf")
    assert json.loads(jpath.read_text()) == classification
    page = hpath.read_text()
    assert "labels: Q&amp;A, billing, other." in page and "Q&A" not in page
    assert "<tr><td>accuracy</td><td>33.3</td><td>66.7</td></tr>" in page
    assert "<tr><th></th><th>Q&amp;A</th><th>billing</th><th>other</th></tr>" in page
    # rows true, columns predicted: Q&A once right, once called billing; one billing called other
    assert "<tr><th>Q&amp;A</th><td>1</td><td>1</td><td>0</td></tr>" in page
    assert "<tr><th>billing</th><td>0</td><td>1</td><td>1</td></tr>" in page
    assert "<tr><th>other</th><td>0</td><td>0</td><td>2</td></tr>" in page


# --------------------------------------------------------------------------------- a real tiny comparison
def test_report_of_a_comparison_on_the_tiny_model(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from tests.eval.conftest import scramble

    lm = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    scramble(lm.model)
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    tuned = dataclasses.replace(lm, model=get_peft_model(lm.model, cfg))
    test = [chat(q, a) for q, a in [("Capital of France?", "Paris"), ("Capital of Japan?", "Tokyo")]]
    report = compare(
        tuned,
        tuned,
        test + [chat("Capital of Peru?", "Lima")],
        train=[chat("Capital of Italy?", "Rome")],
        validation=test,
        data_cfg=DataConfig(train="unused.jsonl"),
        eval_cfg=EvalConfig(max_new_tokens=4, few_shot=1, samples=2, general=None),
        shared_weights=True,
    )
    _, hpath = write_report(report, tmp_path)
    page = hpath.read_text()
    console = Console(record=True, width=300, color_system=None)
    print_report(report, console)
    text = console.export_text()
    for v in report["variants"]:
        assert f"<th>{html.escape(v['title'])}</th>" in page and v["title"] in text
    for s in report["samples"]:
        for answer in s["answers"].values():
            assert f"<pre>{html.escape(answer)}</pre>" in page
    assert "Validation loss (answer tokens)" in page
    assert re.search(r"validation loss\s*│\s*\d+\.\d{3}", text)
