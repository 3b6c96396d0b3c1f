"""Data augmentation for small datasets, with its effect measured on held-out data rather than assumed.

Two sources of new training examples, each keeping the original answer:
- paraphrases: the base model itself rewrites each training prompt (sampled, `temperature`); a rewrite is kept
  only if it is non-empty, differs from the original and from the other rewrites, and is 0.5-2x as long;
- templates: the prompt is put into variations such as "Hello, {prompt}" or "{prompt} Thank you." (yours with
  --template; `{prompt}` is the original text).

Only the training split is augmented: validation and test are the original held-out records, so the measurement
compares like with like. `measure` trains the config twice — on the original training split and on the
augmented one, both de-duplicated exactly (near-duplicate removal would undo the templates) — and scores both
tuned models on the same test split.
"""

from __future__ import annotations

import copy
import gc
import json
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.data.schema import Example, Message
from tuneforge.errors import DataError
from tuneforge.eval.metrics import norm
from tuneforge.experiments.common import fixed_split_config, one_training_set, prepare, write_records
from tuneforge.recipes.run import train as train_run

DEFAULT_TEMPLATES = [
    "Hello, {prompt}",
    "{prompt} Thank you.",
    "Quick question: {prompt}",
    "{prompt}\n\nPlease help.",
]
PARAPHRASE_ASK = (
    "Rewrite the following message in different words. Keep every fact, name and number, and its meaning. "
    "Reply with the rewritten message only.\n\nMessage:\n{prompt}"
)


def prompt_text_of(ex: Example) -> str | None:
    if ex.kind == "classification":
        return ex.text
    users = [m for m in ex.prompt_messages() if m.role == "user"]
    return users[-1].content if users else None


def with_prompt(ex: Example, text: str, how: str) -> Example:
    new = copy.deepcopy(ex)
    if new.kind == "classification":
        new.text = text
    else:
        prompt = new.prompt_messages()
        last_user = max(i for i, m in enumerate(prompt) if m.role == "user")
        new.messages[last_user] = Message("user", text)
    new.meta = {**ex.meta, "augmented": how, "from": ex.source.where() if ex.source else None}
    new.source = None
    return new


def keep_paraphrase(original: str, candidate: str, seen: set[str]) -> str | None:
    """The reason a generated rewrite is dropped, or None when it is kept."""
    c = norm(candidate).lower()
    if not c:
        return "empty"
    if c == norm(original).lower():
        return "same as the original"
    if c in seen:
        return "duplicate rewrite"
    ratio = len(candidate) / max(len(original), 1)
    if not 0.5 <= ratio <= 2.0:
        return f"length {ratio:.1f}x the original"
    return None


GenerateFn = Callable[[list[list[Message]], int], list[str]]


def model_generate_fn(lm: Any, temperature: float = 0.8, max_new_tokens: int = 160) -> GenerateFn:
    from tuneforge.eval.generate import SamplingParams, generate_chats

    def gen(convs: list[list[Message]], seed: int) -> list[str]:
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        return [g.text for g in generate_chats(lm, convs, params, batch_size=16)]

    return gen


def paraphrases(
    examples: Sequence[Example], generate: GenerateFn, n: int = 1, seed: int = 0
) -> tuple[list[Example], dict[str, int]]:
    """Up to n kept rewrites per example, and the count of each reason a rewrite was dropped."""
    todo = [(e, prompt_text_of(e)) for e in examples]
    todo = [(e, t) for e, t in todo if t]
    asks = [[Message("user", PARAPHRASE_ASK.format(prompt=t))] for _, t in todo]
    seen: list[set[str]] = [{norm(t).lower()} for _, t in todo]
    out: list[Example] = []
    dropped: dict[str, int] = {}
    for round_ in range(n):
        for (ex, text), got, s in zip(todo, generate(asks, seed + round_), seen, strict=True):
            got = got.strip().strip('"').strip()
            why = keep_paraphrase(text, got, s)
            if why:
                key = why.split(" ")[0] if why.startswith("length") else why
                dropped[key] = dropped.get(key, 0) + 1
                continue
            s.add(norm(got).lower())
            out.append(with_prompt(ex, got, "paraphrase"))
    return out, dropped


def template_variants(
    examples: Sequence[Example], templates: Sequence[str], per_example: int = 1, seed: int = 0
) -> list[Example]:
    for t in templates:
        if "{prompt}" not in t:
            raise DataError(f"template {t!r} has no {{prompt}}", "write it like 'Hello, {prompt}'")
    rng = random.Random(seed)
    out = []
    for ex in examples:
        text = prompt_text_of(ex)
        if not text:
            continue
        for t in rng.sample(list(templates), min(per_example, len(templates))):
            out.append(with_prompt(ex, t.replace("{prompt}", text), f"template: {t}"))
    return out


def augment(
    cfg: RunConfig,
    *,
    n_paraphrases: int = 1,
    templates: Sequence[str] | None = None,
    per_example_templates: int = 1,
    temperature: float = 0.8,
    measure: bool = True,
    out: str | Path | None = None,
    show: bool = True,
) -> dict[str, Any]:
    """Add paraphrases and template variations of the training prompts; with `measure`, train with and without
    them on the same held-out test split and report the difference (augment.md, augment.json)."""
    from tuneforge.progress import console

    one_training_set(cfg, "augmentation")
    out = Path(out or Path(cfg.run_dir).with_name(Path(cfg.run_dir).name + "-augment"))
    prepared = prepare(cfg)
    train, val, test = prepared.train, prepared.validation, prepared.test
    if measure and not test:
        raise DataError("measuring augmentation needs a test split", "set data.split.test > 0 or data.test")
    new, dropped = _added(cfg, train, n_paraphrases, templates, per_example_templates, temperature, show)
    files = {
        "train": write_records(train, out / "data" / "train.jsonl"),
        "augmented_train": write_records(train + new, out / "data" / "train_augmented.jsonl"),
        "validation": write_records(val, out / "data" / "validation.jsonl") if val else None,
        "test": write_records(test, out / "data" / "test.jsonl") if test else None,
    }
    # What was added, with where it came from, for a person to read.
    (out / "data" / "added.jsonl").write_text(
        "".join(
            json.dumps(
                {"how": e.meta.get("augmented"), "from": e.meta.get("from"), "prompt": prompt_text_of(e)}
            )
            + "\n"
            for e in new
        )
    )
    report: dict[str, Any] = {
        "train": len(train),
        "added": {
            "paraphrase": sum(e.meta.get("augmented") == "paraphrase" for e in new),
            "template": sum(str(e.meta.get("augmented", "")).startswith("template") for e in new),
        },
        "paraphrases_dropped": dropped,
        "files": {k: str(v) for k, v in files.items() if v},
    }
    if show:
        console.print(
            f"Added {len(new)} examples to {len(train)} ({report['added']}); dropped rewrites: {dropped or 'none'}"
        )
    if measure:
        report.update(_measure(cfg, out, files, show))
        (out / "augment.md").write_text(markdown(report))
        if show:
            print_augment(report, console)
    (out / "augment.json").write_text(json.dumps(report, indent=1))
    return report


def _added(
    cfg: RunConfig,
    train: list[Example],
    n_paraphrases: int,
    templates: Sequence[str] | None,
    per_example: int,
    temperature: float,
    show: bool,
) -> tuple[list[Example], dict[str, int]]:
    """The new examples (paraphrases by the base model, then template variations) and why rewrites were dropped."""
    from tuneforge.progress import console
    from tuneforge.recipes.runs import load_any

    new: list[Example] = []
    dropped: dict[str, int] = {}
    if n_paraphrases > 0:
        lm = load_any(cfg.model.name, chat_template=cfg.model.chat_template)
        if show:
            console.print(f"Paraphrasing {len(train)} training prompts x{n_paraphrases} with {lm.name}")
        para, dropped = paraphrases(train, model_generate_fn(lm, temperature), n_paraphrases, cfg.seed)
        new += para
        del lm
        gc.collect()
    templates = list(DEFAULT_TEMPLATES if templates is None else templates)
    if templates and per_example > 0:
        new += template_variants(train, templates, per_example, cfg.seed)
    return new, dropped


def _measure(cfg: RunConfig, out: Path, files: dict[str, Path | None], show: bool) -> dict[str, Any]:
    """Train on the original and the augmented training file, scored on the same test split; then the original
    again for as many steps as the augmented run took."""

    def run_config(name: str, train_file: Path | None) -> RunConfig:
        return fixed_split_config(
            cfg, out / name, train_file, files["validation"], files["test"], dedupe="exact"
        )

    runs = {name: _train_and_score(run_config(name, files[key]), show) for name, key in RUN_FILES.items()}
    # More examples at the same epochs is also more steps: train the original as long as the augmented run,
    # so that the effect of the added examples is told apart from the effect of training longer.
    steps = runs["augmented"]["steps"]
    if steps > runs["original"]["steps"]:
        longer = run_config("original-same-steps", files["train"])
        longer = longer.model_copy(
            update={
                "train": longer.train.model_copy(update={"max_steps": steps, "early_stopping_patience": None})
            }
        )
        runs["original_same_steps"] = _train_and_score(longer, show)
    out_: dict[str, Any] = {"runs": runs}
    b = runs["augmented"]["headline"]
    for key, run in (("delta", "original"), ("delta_same_steps", "original_same_steps")):
        if run in runs:
            a = runs[run]["headline"]
            out_[key] = {k: b[k] - a[k] for k in a if k in b}
    return out_


RUN_FILES = {"original": "train", "augmented": "augmented_train"}


def _train_and_score(cfg: RunConfig, show: bool) -> dict[str, Any]:
    from tuneforge.data.tokenize import label_set
    from tuneforge.progress import console

    if show:
        console.print(f"[bold]training {cfg.run_dir}[/]")
    result, rec = train_run(cfg, overwrite=True)
    try:
        test = rec.splits["test"][: cfg.eval.max_examples] if cfg.eval.max_examples else rec.splits["test"]
        scored = rec.score(test, label_set(rec.splits["train"] + test), Path(cfg.run_dir).name)
        row = {
            "train_examples": len(rec.splits["train"]),
            "steps": result.steps,
            "train_seconds": round(result.train_seconds, 1),
            "best_val_loss": result.best_val_loss,
            "headline": scored["headline"],
        }
    finally:
        rec.loop.cleanup()
    shutil.rmtree(rec.run.checkpoints, ignore_errors=True)
    return row


RUN_TITLES = {
    "original": "original",
    "original_same_steps": "original, as many steps",
    "augmented": "augmented",
}


def comparison(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The effect table: one column per run, then the change against the original at the same epochs and, when
    the augmented run took more steps, against the original trained for as many steps."""
    runs = [k for k in RUN_TITLES if k in report["runs"]]
    header = ["metric", *(RUN_TITLES[k] for k in runs), "change"]
    if "delta_same_steps" in report:
        header.append("change vs as many steps")
    r = [report["runs"][k] for k in runs]
    rows = [
        ["training examples", *(str(x["train_examples"]) for x in r), ""],
        ["steps", *(str(x["steps"]) for x in r), ""],
    ]
    if all(x["best_val_loss"] is not None for x in r):
        aug, orig = report["runs"]["augmented"]["best_val_loss"], report["runs"]["original"]["best_val_loss"]
        rows.append(["best validation loss", *(f"{x['best_val_loss']:.3f}" for x in r), f"{aug - orig:+.3f}"])
        if "delta_same_steps" in report:
            rows[-1].append(f"{aug - report['runs']['original_same_steps']['best_val_loss']:+.3f}")
    for k, d in report["delta"].items():
        row = [k, *(f"{x['headline'][k]:.1f}" for x in r), f"{d:+.1f}"]
        if "delta_same_steps" in report:
            row.append(f"{report['delta_same_steps'][k]:+.1f}")
        rows.append(row)
    width = len(header)
    return header, [row + [""] * (width - len(row)) for row in rows]


def markdown(report: dict[str, Any]) -> str:
    header, rows = comparison(report)
    lines = [
        f"Augmentation: {report['train']} training examples + {sum(report['added'].values())} added "
        f"({report['added']}); held-out test split unchanged.",
        "",
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines) + "\n"


def print_augment(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    header, rows = comparison(report)
    t = Table(title="Effect of augmentation on the held-out test split")
    for c in header:
        t.add_column(c, justify="left" if c == "metric" else "right")
    for row in rows:
        t.add_row(*row)
    console.print(t)
