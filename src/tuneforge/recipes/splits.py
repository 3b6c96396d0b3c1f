"""A run's data: read, cleaned, validated and split once into the run folder; a resumed run and every later
evaluation read the saved splits back, so they see exactly the examples the run trained and was tested on."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.data.prepare import prepare_data, read_split, write_rejects, write_split
from tuneforge.data.schema import Example
from tuneforge.data.tokenize import count_tokens_fn
from tuneforge.rundir import SPLITS, RunDir

Splits = dict[str, list[Example]]


def prepare_splits(
    cfg: RunConfig, run: RunDir, count: Callable[[Example], int]
) -> tuple[Splits, dict[str, Any]]:
    """The run's train/validation/test splits and its data report; `count` is an example's token length."""
    if run.splits_marker.is_file():
        report = json.loads(run.data_report.read_text()) if run.data_report.is_file() else {}
        return read_splits(run), report
    run.data.mkdir(parents=True, exist_ok=True)
    prepared = prepare_data(cfg.data, cfg.seed, count)
    splits = prepared.splits()
    for name in SPLITS:
        write_split(splits[name], run.split(name))
    write_rejects(prepared.rejects, run.rejects)
    report = {
        "format": prepared.format,
        "stats": prepared.stats,
        "warnings": [str(p) for p in prepared.problems[:50]],
        "n_warnings": len(prepared.problems),
    }
    write_data_report(run, report)
    run.splits_marker.write_text(json.dumps({n: len(splits[n]) for n in SPLITS}))
    return splits, report


def token_counter(cfg: RunConfig, tok: Any) -> Callable[[Example], int]:
    """An example's length as the run's recipe sees it: rendered through the chat template for a language model,
    the text's own tokens for a classification head."""
    from tuneforge.methods import registry

    if registry.get(cfg.method.name).recipe == "classify":
        return lambda ex: len(tok(ex.text or "", truncation=False)["input_ids"])
    return count_tokens_fn(tok, cfg.data)


def read_splits(run: RunDir) -> Splits:
    """The splits a run saved ({} for a split it has none of)."""
    return {n: read_split(run.split(n)) if run.split(n).is_file() else [] for n in SPLITS}


def write_data_report(run: RunDir, report: dict[str, Any]) -> None:
    run.data_report.write_text(json.dumps(report, indent=1, default=str))


def append_rejects(run: RunDir, rejects: Sequence[Any]) -> None:
    """More rejected records (tokenisation's), after the ones data preparation wrote."""
    if not rejects:
        return
    with open(run.rejects, "a") as f:
        for r in rejects:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False, default=str) + "\n")
