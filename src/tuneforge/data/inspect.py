"""`tuneforge data inspect FILE`: what a data file holds and what is wrong with it, before any training.

`inspect_file` builds a plain JSON-able report (so the CLI can also print it as JSON); `render_inspect` prints
it with rich tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneforge.config import CleanConfig
from tuneforge.data.clean import clean, find_duplicates
from tuneforge.data.formats import load_file
from tuneforge.data.prepare import count_reasons
from tuneforge.data.schema import Example, Problem
from tuneforge.data.validate import validate

HISTOGRAM_BINS = 10


def inspect_file(
    path: str | Path,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    count_tokens: Callable[[Example], int] | None = None,
    *,
    system_prompt: str | None = None,
    near_threshold: float = 0.9,
    min_examples: int = 10,
    show: int = 10,
    preview: int = 0,
    render: Callable[[Example], str] | None = None,
) -> dict[str, Any]:
    """Report on one data file; `show` caps the listed problems, rejects and duplicate pairs (totals are exact).
    `preview` > 0 adds the first records as normalised turns (and, with `render`, as the text the model is trained
    on: its chat template applied)."""
    loaded = load_file(path, format, columns, system_prompt)
    # Duplicates and lengths are measured on whitespace-normalised records, as training would see them.
    examples = clean(loaded.examples, CleanConfig(dedupe="none", missing="fill")).examples
    problems = validate(examples, min_examples=min_examples)
    dups = find_duplicates(examples, near=True, threshold=near_threshold)
    return {
        "path": str(path),
        "format": loaded.format,
        "fields": loaded.fields,
        "columns": loaded.columns,
        "rows": loaded.n_rows,
        "examples": len(examples),
        "kinds": _counts(ex.kind for ex in examples),
        "roles": _counts(m.role for ex in examples for m in _all_messages(ex)),
        "labels": _counts(
            str(ex.label) for ex in examples if ex.kind == "classification" and ex.label is not None
        ),
        "desirable": _counts(str(ex.desirable).lower() for ex in examples if ex.desirable is not None),
        "with_tools": sum(1 for ex in examples if ex.tools),
        "problems": _problems(problems, show),
        "rejects": {
            "total": len(loaded.rejects),
            "by_reason": count_reasons(loaded.rejects),
            "items": [_reject_item(r) for r in loaded.rejects[:show]],
        },
        "duplicates": _duplicates(examples, dups, near_threshold, show),
        "lengths": _lengths(examples, count_tokens),
        **({"preview": [_preview(ex, render) for ex in examples[:preview]]} if preview else {}),
    }


def _preview(ex: Example, render: Callable[[Example], str] | None) -> dict[str, Any]:
    def turns(msgs: Sequence[Any] | None) -> list[dict[str, str]] | None:
        return None if msgs is None else [{"role": m.role, "content": m.content} for m in msgs]

    row: dict[str, Any] = {"where": _where(ex), "kind": ex.kind, "messages": turns(ex.messages)}
    extras = {
        "text": ex.text,
        "label": ex.label,
        "chosen": turns(ex.chosen),
        "rejected": turns(ex.rejected),
        "desirable": ex.desirable,
    }
    row.update({k: v for k, v in extras.items() if v is not None})
    if render is not None:
        row["rendered"] = render(ex)
    return row


def _all_messages(ex: Example) -> list:
    return [*ex.messages, *(ex.chosen or []), *(ex.rejected or [])]


def _counts(values: Any) -> dict[str, int]:
    return dict(Counter(values).most_common())


def _where(ex_or_problem: Any) -> str | None:
    src = ex_or_problem.source
    return src.where() if src else None


def _problems(problems: Sequence[Problem], show: int) -> dict[str, Any]:
    by_code: dict[str, dict[str, Any]] = {}
    for p in problems:
        entry = by_code.setdefault(p.code, {"severity": p.severity, "count": 0, "first": _where(p)})
        entry["count"] += 1
    return {
        "errors": sum(1 for p in problems if p.severity == "error"),
        "warnings": sum(1 for p in problems if p.severity == "warning"),
        "by_code": by_code,
        "items": [
            {
                "severity": p.severity,
                "code": p.code,
                "where": _where(p),
                "field": p.field,
                "message": p.message,
            }
            for p in problems[:show]
        ],
    }


def _reject_item(r: Any) -> dict[str, Any]:
    return {"where": _where(r), "stage": r.stage, "field": r.field, "reason": r.reason}


def _duplicates(examples: list[Example], dups: list, threshold: float, show: int) -> dict[str, Any]:
    return {
        "exact": sum(1 for d in dups if d.exact),
        "near": sum(1 for d in dups if not d.exact),
        "threshold": threshold,
        "pairs": [
            {
                "where": _where(examples[d.index]),
                "of": _where(examples[d.of]),
                "similarity": round(d.similarity, 3),
                "exact": d.exact,
            }
            for d in dups[:show]
        ],
    }


def _lengths(examples: list[Example], count_tokens: Callable[[Example], int] | None) -> dict[str, Any]:
    unit = "tokens" if count_tokens is not None else "characters"
    values = [count_tokens(ex) if count_tokens else len(ex.all_text()) for ex in examples]
    if not values:
        return {"unit": unit, "count": 0}
    arr = np.asarray(values, dtype=float)
    counts, edges = np.histogram(arr, bins=min(HISTOGRAM_BINS, max(1, len(set(values)))))
    return {
        "unit": unit,
        "count": len(values),
        "min": int(arr.min()),
        "mean": round(float(arr.mean()), 1),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "max": int(arr.max()),
        "histogram": {"edges": [round(float(e), 1) for e in edges], "counts": [int(c) for c in counts]},
    }


# ------------------------------------------------------------------------------------------------ render
def render_inspect(report: dict[str, Any], console: Console) -> None:
    console.print(f"[bold]{escape(report['path'])}[/] — format [cyan]{report['format']}[/]")
    if report.get("columns"):
        renames = ", ".join(f"{ours} ← {theirs}" for ours, theirs in report["columns"].items())
        console.print(f"columns: {escape(renames)}")
    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_row("rows read", str(report["rows"]))
    summary.add_row("examples", str(report["examples"]))
    summary.add_row("rejected rows", str(report["rejects"]["total"]))
    summary.add_row("kinds", _inline(report["kinds"]))
    if report["roles"]:
        summary.add_row("roles", _inline(report["roles"]))
    if report["desirable"]:
        summary.add_row("desirable", _inline(report["desirable"]))
    if report["with_tools"]:
        summary.add_row("with tools", str(report["with_tools"]))
    console.print(summary)

    if report["labels"]:
        console.print(_count_table("label", report["labels"], limit=20))
    short = _shortener(report["path"])
    _render_problems(report["problems"], console, short)
    _render_rejects(report["rejects"], console, short)
    _render_duplicates(report["duplicates"], console, short)
    _render_lengths(report["lengths"], console)


def _shortener(path: str) -> Callable[[str | None], str]:
    """Places in the inspected file are shown as "line 12" (or "record 3") rather than with the whole path."""

    def short(where: str | None) -> str:
        if not where:
            return "dataset"
        if where.startswith(path + ":"):
            return "line " + where[len(path) + 1 :]
        return where.removeprefix(path + " ")

    return short


def _inline(counts: dict[str, int]) -> str:
    return escape(", ".join(f"{k} {v}" for k, v in counts.items()))


def _count_table(title: str, counts: dict[str, int], limit: int) -> Table:
    table = Table(title=f"{title}s")
    table.add_column(title)
    table.add_column("count", justify="right")
    total = sum(counts.values())
    for name, n in list(counts.items())[:limit]:
        table.add_row(escape(name), f"{n} ({n / total:.0%})")
    if len(counts) > limit:
        table.add_row(f"… {len(counts) - limit} more", "")
    return table


def _render_problems(problems: dict[str, Any], console: Console, short: Callable[[str | None], str]) -> None:
    if not problems["by_code"]:
        console.print("[green]validation: no problems[/]")
        return
    table = Table(title=f"validation: {problems['errors']} errors, {problems['warnings']} warnings")
    for col in ("code", "severity", "count", "first at"):
        table.add_column(col, justify="right" if col == "count" else "left")
    for code, e in problems["by_code"].items():
        style = "red" if e["severity"] == "error" else "yellow"
        table.add_row(code, f"[{style}]{e['severity']}[/]", str(e["count"]), escape(short(e["first"])))
    console.print(table)
    for item in problems["items"]:
        field = f", {item['field']}" if item["field"] else ""
        console.print(f"  {escape(short(item['where']) + field)}: {escape(item['message'])}")


def _render_rejects(rejects: dict[str, Any], console: Console, short: Callable[[str | None], str]) -> None:
    if not rejects["total"]:
        return
    table = Table(title=f"records that cannot be used: {rejects['total']}")
    for col in ("stage", "reason", "count"):
        table.add_column(col, justify="right" if col == "count" else "left")
    for stage, reasons in rejects["by_reason"].items():
        for reason, n in reasons.items():
            table.add_row(stage, escape(reason), str(n))
    console.print(table)
    for item in rejects["items"]:
        console.print(f"  {escape(short(item['where']))}: {escape(item['reason'])}")


def _render_duplicates(dups: dict[str, Any], console: Console, short: Callable[[str | None], str]) -> None:
    console.print(
        f"duplicates: {dups['exact']} exact, {dups['near']} near (similarity ≥ {dups['threshold']})"
    )
    if not dups["pairs"]:
        return
    table = Table()
    for col in ("duplicate", "of", "similarity"):
        table.add_column(col)
    for pair in dups["pairs"]:
        kind = "exact" if pair["exact"] else f"{pair['similarity']:.2f}"
        table.add_row(escape(short(pair["where"])), escape(short(pair["of"])), kind)
    console.print(table)


def _render_lengths(lengths: dict[str, Any], console: Console) -> None:
    if not lengths.get("count"):
        return
    unit = lengths["unit"]
    console.print(
        f"length in {unit}: min {lengths['min']}, mean {lengths['mean']}, p50 {lengths['p50']:.0f}, "
        f"p95 {lengths['p95']:.0f}, max {lengths['max']}"
    )
    hist = lengths["histogram"]
    peak = max(hist["counts"]) or 1
    edges = hist["edges"]
    for i, n in enumerate(hist["counts"]):
        bar = "█" * max(1 if n else 0, round(30 * n / peak))
        console.print(f"  {edges[i]:>9.0f} – {edges[i + 1]:<9.0f} {bar} {n}")
