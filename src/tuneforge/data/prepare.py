"""The data pipeline the trainer and the CLI call: read → normalise → clean → validate → split.

    prepared = prepare_data(cfg.data, seed=cfg.seed, count_tokens=...)
    write_split(prepared.train, run_dir / "data" / "train.jsonl")
    write_rejects(prepared.rejects, run_dir / "data" / "rejects.jsonl")

Nothing is dropped silently: every row read ends up in a split or in `rejects` with its stage and reason, and
`stats` counts both. Separate validation/test files are cleaned and validated too, but not split.
Preference records are kept as they are, paired or unpaired (KTO, desirable true/false): the tokenizer and the
trainer decide how each kind is used.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.config import DataConfig
from tuneforge.data.clean import clean
from tuneforge.data.formats import load_file
from tuneforge.data.schema import Example, Problem, Reject
from tuneforge.data.split import split, stratified_by
from tuneforge.data.validate import drop_invalid
from tuneforge.errors import DataError


@dataclass
class PreparedData:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    format: str
    rejects: list[Reject]  # every dropped record, and every filled value (action="filled")
    problems: list[Problem]  # warnings on kept records
    stats: dict[str, Any] = field(default_factory=dict)

    def splits(self) -> dict[str, list[Example]]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


@dataclass
class _FileResult:
    path: str
    format: str
    examples: list[Example]
    rejects: list[Reject]
    problems: list[Problem]
    stats: dict[str, Any]


def prepare_data(
    cfg: DataConfig, seed: int, count_tokens: Callable[[Example], int] | None = None
) -> PreparedData:
    if cfg.mix:
        return _prepare_mix(cfg, seed, count_tokens)
    train = _prepare_file(cfg.train, cfg, count_tokens)
    held: dict[str, _FileResult] = {}
    for name in ("validation", "test"):
        path = getattr(cfg, name)
        if path:
            held[name] = _prepare_file(path, cfg, count_tokens)
            _check_same_kinds(train, held[name])

    fractions = {
        "validation": 0.0 if "validation" in held else cfg.split.validation,
        "test": 0.0 if "test" in held else cfg.split.test,
    }
    parts = split(
        train.examples,
        **fractions,
        seed=seed,
        stratify=cfg.split.stratify,
        min_validation=cfg.split.min_validation,
        max_validation=cfg.split.max_validation,
    )
    rejects = list(train.rejects)
    problems = list(train.problems)
    for name, res in held.items():
        if cfg.clean.dedupe != "none":
            _drop_overlap(res, parts["train"], name)
        parts[name] = res.examples
        rejects += res.rejects
        problems += res.problems

    files = {"train": train, **held}
    stats = _summary(files, parts, rejects, problems)
    stats["stratified_by"] = stratified_by(train.examples, **fractions, stratify=cfg.split.stratify)
    if len(parts["train"]) < cfg.min_examples:
        raise _too_few(cfg, train, parts, stats)
    return PreparedData(
        parts["train"], parts["validation"], parts["test"], train.format, rejects, problems, stats
    )


def _prepare_mix(cfg: DataConfig, seed: int, count_tokens: Callable[[Example], int] | None) -> PreparedData:
    """Multi-task: each task's file is prepared and split on its own, every example is tagged with its task
    (meta["task"], so reports score tasks separately), and the training split is re-sampled so that each
    task's share of the stream is its normalised weight (tasks are repeated or cut; seeded)."""
    parts = []
    for task in cfg.mix:
        one = prepare_data(cfg.model_copy(update={"mix": [], "train": task.train}), seed, count_tokens)
        for ex in one.train + one.validation + one.test:
            ex.meta = {**ex.meta, "task": task.name}
        parts.append((task, one))
    total_w = sum(t.weight for t, _ in parts)
    n_total = sum(len(p.train) for _, p in parts)
    train: list[Example] = []
    rng = random.Random(seed)
    for task, p in parts:
        want = max(1, round(task.weight / total_w * n_total))
        pool = list(p.train)
        rng.shuffle(pool)
        train += [pool[i % len(pool)] for i in range(want)]
    rng.shuffle(train)
    stats = {
        "format": "mix",
        "tasks": {
            t.name: {
                "weight": t.weight,
                "train_file": len(p.train),
                "train_sampled": sum(1 for e in train if e.meta.get("task") == t.name),
                **p.stats,
            }
            for t, p in parts
        },
        "split": {"train": len(train)},
    }
    return PreparedData(
        train,
        [e for _, p in parts for e in p.validation],
        [e for _, p in parts for e in p.test],
        "+".join(sorted({p.format for _, p in parts})),
        [r for _, p in parts for r in p.rejects],
        [q for _, p in parts for q in p.problems],
        stats,
    )


def _prepare_file(path: str, cfg: DataConfig, count_tokens: Callable[[Example], int] | None) -> _FileResult:
    loaded = load_file(path, cfg.format, cfg.columns, cfg.system_prompt)
    cleaned = clean(loaded.examples, cfg.clean, count_tokens)
    kept, invalid, warnings = drop_invalid(cleaned.examples)
    rejects = loaded.rejects + cleaned.rejects + invalid
    stats = {
        "path": str(path),
        "format": loaded.format,
        "rows": loaded.n_rows,
        "examples": len(kept),
        "rejected": count_reasons(rejects),
        "filled": cleaned.stats.get("filled", 0),
        "duplicates_exact": cleaned.stats.get("duplicates_exact", 0),
        "duplicates_near": cleaned.stats.get("duplicates_near", 0),
        "whitespace_normalised": cleaned.stats.get("whitespace_normalised", 0),
    }
    if loaded.columns:
        stats["columns"] = dict(loaded.columns)
    return _FileResult(str(path), loaded.format, kept, rejects, warnings, stats)


def _check_same_kinds(train: _FileResult, other: _FileResult) -> None:
    a = sorted({ex.kind for ex in train.examples})
    b = sorted({ex.kind for ex in other.examples})
    if a and b and a != b:
        raise DataError(
            f"{other.path} holds {'/'.join(b)} records but {train.path} holds {'/'.join(a)} records",
            "give validation and test files the same kind of records as the training file",
        )


def _drop_overlap(res: _FileResult, train: list[Example], name: str) -> None:
    """Records of a held-out file that are also in train would inflate its scores: they are rejected."""
    seen = {ex.fingerprint(): ex for ex in train}
    kept: list[Example] = []
    for ex in res.examples:
        twin = seen.get(ex.fingerprint())
        if twin is None:
            kept.append(ex)
            continue
        where = twin.source.where() if twin.source else "a training record"
        reason = f"train overlap: same record as {where}, kept out of {name}"
        res.rejects.append(Reject("clean", reason, ex.source, record=ex))
    res.examples = kept
    res.stats["examples"] = len(kept)
    res.stats["rejected"] = count_reasons(res.rejects)


# -------------------------------------------------------------------------------------------- reporting
def reason_category(reason: str) -> str:
    """The kind of a reject reason, for counting: "near duplicate (0.93) of a.jsonl:3" → "near duplicate".

    Reasons are written "category: detail", "category (n) of where" or "category of where".
    """
    cuts = [i for i in (reason.find(": "), reason.find(" ("), reason.find(" of ")) if i > 0]
    return reason[: min(cuts)] if cuts else reason


def count_reasons(rejects: Iterable[Reject], action: str = "dropped") -> dict[str, dict[str, int]]:
    """{stage: {reason category: count}} over the rejects with the given action."""
    out: dict[str, Counter[str]] = {}
    for r in rejects:
        if r.action == action:
            out.setdefault(r.stage, Counter())[reason_category(r.reason)] += 1
    return {stage: dict(c.most_common()) for stage, c in out.items()}


def _summary(
    files: dict[str, _FileResult],
    parts: dict[str, list[Example]],
    rejects: list[Reject],
    problems: list[Problem],
) -> dict[str, Any]:
    dropped = [r for r in rejects if r.action == "dropped"]
    return {
        "format": files["train"].format,
        "rows_read": sum(f.stats["rows"] for f in files.values()),
        "examples": sum(len(v) for v in parts.values()),
        "dropped": len(dropped),
        "rejected": count_reasons(rejects),
        "filled": sum(f.stats["filled"] for f in files.values()),
        "duplicates_exact": sum(f.stats["duplicates_exact"] for f in files.values()),
        "duplicates_near": sum(f.stats["duplicates_near"] for f in files.values()),
        "warnings": dict(Counter(p.code for p in problems).most_common()),
        "split": {k: len(v) for k, v in parts.items()},
        "files": {name: f.stats for name, f in files.items()},
    }


def _too_few(
    cfg: DataConfig, train: _FileResult, parts: dict[str, list[Example]], stats: dict[str, Any]
) -> DataError:
    n = len(parts["train"])
    rows = train.stats["rows"]
    reasons = Counter()
    for stage in train.stats["rejected"].values():
        reasons.update(stage)
    top = ", ".join(f"{reason} ×{k}" for reason, k in reasons.most_common(3))
    dropped = sum(reasons.values())
    held_out = sum(len(parts[s]) for s in ("validation", "test") if not getattr(cfg, s))
    detail = f"{rows} rows read, {dropped} rejected" + (f" (most often: {top})" if top else "")
    if held_out:
        detail += f", {held_out} held out for validation/test"
    return DataError(
        f"only {n} training examples left from {cfg.train} (data.min_examples is {cfg.min_examples}): {detail}",
        "add records or fix the rejected ones (`tuneforge data inspect` shows why), or lower data.min_examples",
    )


# ------------------------------------------------------------------------------------------------ files
def write_rejects(rejects: Sequence[Reject], path: str | Path) -> Path:
    """Write rejects as JSONL (one Reject.to_dict() per line)."""
    return _write_jsonl((r.to_dict() for r in rejects), path)


def write_split(examples: Sequence[Example], path: str | Path) -> Path:
    """Write a split as JSONL of Example.to_dict(); read it back with read_split()."""
    return _write_jsonl((ex.to_dict() for ex in examples), path)


def read_split(path: str | Path) -> list[Example]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"prepared split {p} does not exist", "run `tuneforge data prepare` (or train) first")
    out = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            out.append(Example.from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(
                f"{p}:{lineno} is not a prepared example ({e})", "prepare the data again"
            ) from None
    return out


def _write_jsonl(items: Iterable[dict[str, Any]], path: str | Path) -> Path:
    # Written to a temporary name and renamed, so a crash never leaves half a file under the real name.
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, p)
    return p
