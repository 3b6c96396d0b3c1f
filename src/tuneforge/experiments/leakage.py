"""Training-data leakage: how much of its training data a tuned model reproduces verbatim from a prefix.

Canary-style extraction (Carlini et al., "The Secret Sharer" / "Extracting Training Data from LLMs"): each
example's prompt plus the first half of its answer is given to the model, which continues greedily; the example
counts as *extracted* when the continuation reproduces the rest of the answer exactly. Answers shorter than
`min_suffix_tokens` are asked from the prompt alone.

A reproduction rate means little on its own — a model that learnt the task reproduces short, predictable answers
of unseen questions too. So the same check runs on held-out test examples, and the report gives the gap:
memorisation is what the model reproduces of its training data beyond what it reproduces of unseen data. Planted
canaries (unique strings put in the training data on purpose) are checked one by one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tuneforge.config import DataConfig
from tuneforge.data.schema import Example
from tuneforge.data.tokenize import conversation, label_set, prompt_text
from tuneforge.eval.generate import SamplingParams, generate
from tuneforge.eval.metrics import norm
from tuneforge.models.adapters import adapters_merged, adapters_off
from tuneforge.models.load import LoadedModel


@dataclass
class Probe:
    prompt: str  # rendered prompt + the answer's first part
    target_ids: list[int]
    target: str
    where: str


def probes(
    lm: LoadedModel,
    examples: Sequence[Example],
    data_cfg: DataConfig,
    labels: Sequence[str] = (),
    prefix_fraction: float = 0.5,
    min_suffix_tokens: int = 3,
) -> list[Probe]:
    tok = lm.tokenizer
    out = []
    for i, ex in enumerate(examples):
        conv = conversation(ex, data_cfg, labels)
        if not conv or conv[-1].role != "assistant" or not conv[-1].content.strip():
            continue
        answer = conv[-1].content
        # Cut between words, not tokens: a prefix ending mid-word is tokenised differently than in training.
        starts = [m.start() for m in re.finditer(r"\S+", answer)]
        cut = starts[int(len(starts) * prefix_fraction)] if len(starts) > 1 else 0
        if len(tok(answer[cut:], add_special_tokens=False)["input_ids"]) < min_suffix_tokens:
            cut = 0
        head, target = answer[:cut].rstrip(), answer[cut:]
        prompt = prompt_text(tok, conv[:-1], ex.tools) + head
        where = ex.source.where() if ex.source else f"#{i + 1}"
        out.append(Probe(prompt, tok(target, add_special_tokens=False)["input_ids"], target, where))
    return out


def extraction(
    lm: LoadedModel,
    examples: Sequence[Example],
    data_cfg: DataConfig,
    *,
    adapters: bool = True,
    labels: Sequence[str] = (),
    prefix_fraction: float = 0.5,
    min_suffix_tokens: int = 3,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Extraction rate (0-100) and mean share of the suffix reproduced, over `examples`."""
    ps = probes(lm, examples, data_cfg, labels, prefix_fraction, min_suffix_tokens)
    rows = []
    order = sorted(range(len(ps)), key=lambda i: len(ps[i].prompt))
    got: dict[int, str] = {}
    ctx = adapters_merged(lm.model) if adapters else adapters_off(lm.model)
    with ctx:
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            n = max(len(ps[i].target_ids) for i in idx) + 2
            gens = generate(lm, [ps[i].prompt for i in idx], SamplingParams(max_new_tokens=n))
            for i, g in zip(idx, gens, strict=True):
                got[i] = g.text
    for i, p in enumerate(ps):
        text = got.get(i, "")
        # Compared word by word: generation output is stripped, and a token boundary may fall mid-word.
        want, have = norm(p.target).split(), norm(text).split()
        same = 0
        for a, b in zip(have, want, strict=False):
            if a != b:
                break
            same += 1
        verbatim = bool(want) and same == len(want)
        rows.append(
            {
                "where": p.where,
                "target": p.target,
                "generated": text,
                "verbatim": verbatim,
                "share": same / max(len(want), 1),
                "target_tokens": len(p.target_ids),
            }
        )
    n = len(rows)
    return {
        "n": n,
        "extracted": 100 * sum(r["verbatim"] for r in rows) / max(n, 1),
        "share": 100 * sum(r["share"] for r in rows) / max(n, 1),
        "rows": rows,
    }


def leakage_report(
    tuned: LoadedModel,
    train: Sequence[Example],
    test: Sequence[Example],
    data_cfg: DataConfig,
    *,
    canaries: Sequence[str] = (),
    max_examples: int = 100,
    base_too: bool = True,
) -> dict[str, Any]:
    """Extraction on training vs held-out examples (and by the base, when the tuned model is an adapter)."""
    labels = label_set(list(train) + list(test))
    train_s, test_s = list(train)[:max_examples], list(test)[:max_examples]
    res: dict[str, Any] = {"prefix": "prompt + first half of the answer (greedy continuation)"}
    res["tuned_train"] = extraction(tuned, train_s, data_cfg, labels=labels)
    if test_s:
        res["tuned_test"] = extraction(tuned, test_s, data_cfg, labels=labels)
    if base_too and getattr(tuned.model, "peft_config", None):
        res["base_train"] = extraction(tuned, train_s, data_cfg, adapters=False, labels=labels)
    res["memorisation_gap"] = res["tuned_train"]["extracted"] - res.get("tuned_test", {}).get(
        "extracted", 0.0
    )
    if canaries:
        hits = [e for e in train if any(c in (e.answer() or "") for c in canaries)]
        found = extraction(tuned, hits, data_cfg, labels=labels) if hits else {"rows": []}
        res["canaries"] = [
            {"where": r["where"], "extracted": r["verbatim"], "share": r["share"]} for r in found["rows"]
        ]
        res["canaries_not_in_training_data"] = [
            c for c in canaries if not any(c in (e.answer() or "") for e in train)
        ]
    longest = sorted(
        (r for r in res["tuned_train"]["rows"] if r["verbatim"]), key=lambda r: -r["target_tokens"]
    )
    res["longest_extracted"] = [{k: r[k] for k in ("where", "target", "target_tokens")} for r in longest[:5]]
    for key in ("tuned_train", "tuned_test", "base_train"):
        if key in res:
            res[key] = {k: v for k, v in res[key].items() if k != "rows"}
    return res


def verdict(res: dict[str, Any]) -> str:
    gap = res["memorisation_gap"]
    train = res["tuned_train"]["extracted"]
    canaries = res.get("canaries") or []
    leaked = [c for c in canaries if c["extracted"]]
    if leaked:
        return f"{len(leaked)} of {len(canaries)} planted canaries are reproduced verbatim: the model memorised them"
    if gap >= 10:
        return (
            f"reproduces {train:.0f}% of training answers verbatim, {gap:.0f} points more than unseen ones: "
            "memorisation beyond the task"
        )
    return (
        f"reproduces {train:.0f}% of training answers verbatim, within {max(gap, 0):.0f} points of unseen ones: "
        "task learning, no sign of memorisation"
    )


def print_leakage(res: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"Training-data extraction ({res['prefix']})")
    for c in ("asked", "examples", "reproduced verbatim (%)", "share of suffix (%)"):
        t.add_column(c, justify="left" if c == "asked" else "right")
    for key, title in (
        ("tuned_train", "tuned, training examples"),
        ("tuned_test", "tuned, unseen test examples"),
        ("base_train", "base, training examples"),
    ):
        if key in res:
            r = res[key]
            t.add_row(title, str(r["n"]), f"{r['extracted']:.1f}", f"{r['share']:.1f}")
    console.print(t)
    for c in res.get("canaries", []):
        console.print(
            f"canary at {c['where']}: {'EXTRACTED' if c['extracted'] else 'not extracted'} ({100 * c['share']:.0f}%)"
        )
    for c in res.get("canaries_not_in_training_data", []):
        console.print(f"[yellow]canary {c!r} is in no training answer[/] (only answers are probed)")
    console.print(f"Verdict: {verdict(res)}.")


def leakage_of_run(run: Any, canaries: Sequence[str] = (), max_examples: int = 100) -> dict[str, Any]:
    """The leakage report of a tuned run folder, on its own saved splits."""
    from pathlib import Path

    from tuneforge.errors import TuneforgeError
    from tuneforge.recipes.runs import load_any, saved_splits

    run = Path(run)
    if not run.is_dir():
        raise TuneforgeError(f"run folder {run} does not exist", "train first: `tuneforge train CONFIG`")
    train, _val, test, cfg = saved_splits(run)
    return leakage_report(
        load_any(str(run)), train, test, cfg.data, canaries=canaries, max_examples=max_examples
    )
