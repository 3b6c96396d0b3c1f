"""Train / validation / test split: seeded, deterministic, stratified where it makes sense.

Stratifying keeps each class's share equal across the splits, so that a before/after comparison on the test
split measures the same mix of classes the model was trained on. Classes too small to be divided stay in train.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from tuneforge.data.schema import Example

SPLITS = ("train", "validation", "test")
MAX_ANSWER_CLASSES = 50  # answers are a "class" only if there are few distinct ones


def split(
    examples: Sequence[Example],
    validation: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    stratify: str = "auto",
    *,
    min_validation: int = 0,
    max_validation: int | None = None,
) -> dict[str, list[Example]]:
    """{"train", "validation", "test"} lists; each split keeps the records' original order.

    With `validation` > 0 the validation split is round(n × validation) records clamped to
    [min_validation, max_validation]: a fraction alone gives a noisy handful on a small file and needlessly many on
    a large one. Something is always left to train on.
    """
    if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
        raise ValueError("validation and test must be fractions in [0, 1) that sum to less than 1")
    if min_validation < 0 or (max_validation is not None and max_validation < max(min_validation, 1)):
        raise ValueError("min_validation must be >= 0 and max_validation >= max(min_validation, 1)")
    n = len(examples)
    fractions = {"validation": validation, "test": test}
    targets = _targets(n, fractions, (min_validation, max_validation))
    active = sum(1 for f in fractions.values() if f > 0)
    groups = _strata(examples, stratify, active)[1]

    rng = random.Random(seed)
    order = sorted(groups)
    for g in order:
        rng.shuffle(groups[g])
    assigned = _allocate({g: len(groups[g]) for g in order}, fractions, targets, rng)

    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for g in order:
        members = groups[g]
        start = 0
        for s in ("validation", "test"):
            k = assigned[g][s]
            out[s] += members[start : start + k]
            start += k
        out["train"] += members[start:]
    return {s: [examples[i] for i in sorted(idx)] for s, idx in out.items()}


def stratified_by(
    examples: Sequence[Example], validation: float = 0.1, test: float = 0.1, stratify: str = "auto"
) -> str:
    """What split() stratifies these records by: "label", "answer", or "none" (also when there is one class
    only, or when every class is too small to divide)."""
    active = sum(1 for f in (validation, test) if f > 0)
    return _strata(examples, stratify, active)[0]


def _strata(examples: Sequence[Example], stratify: str, active: int) -> tuple[str, dict[str, list[int]]]:
    """The stratifying mode in effect and the records' indices by stratum."""
    mode = strata_mode(examples, stratify)
    key = strata_key(examples, mode)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[key(ex)].append(i)
    if len(groups) > 1 and all(len(m) < active + 1 for m in groups.values()):
        return "none", {"": list(range(len(examples)))}  # every class too small to divide: plain random
    return (mode if len(groups) > 1 else "none"), groups


def strata_mode(examples: Sequence[Example], stratify: str) -> str:
    """`stratify` with "auto" decided: "label" for classification data, "answer" when the answers are a few
    repeated values, else "none"."""
    if stratify != "auto":
        return stratify
    if examples and all(ex.kind == "classification" for ex in examples):
        return "label"
    return "answer" if _answers_are_classes(examples) else "none"


def strata_key(examples: Sequence[Example], stratify: str) -> Callable[[Example], str]:
    """The function giving each record's stratum ("" for all when not stratifying)."""
    mode = strata_mode(examples, stratify)
    if mode == "label":
        return lambda ex: "" if ex.label is None else str(ex.label)
    if mode == "answer":
        return lambda ex: _answer_key(ex)
    if mode == "none":
        return lambda ex: ""
    raise ValueError(f"unknown stratify mode {stratify!r}: use auto, none, label or answer")


def _answer_key(ex: Example) -> str:
    answer = ex.answer()
    return "" if answer is None else answer.strip().casefold()


def _answers_are_classes(examples: Sequence[Example]) -> bool:
    """Few distinct answers, nearly all of them repeated: e.g. "yes"/"no" or a category name."""
    if len(examples) < 4:
        return False
    counts = Counter(_answer_key(ex) for ex in examples)
    if len(counts) > MAX_ANSWER_CLASSES or len(counts) > len(examples) / 2:
        return False
    repeated = sum(c for c in counts.values() if c >= 2)
    return repeated >= 0.9 * len(examples)


def _targets(
    n: int, fractions: dict[str, float], validation_bounds: tuple[int, int | None] = (0, None)
) -> dict[str, int]:
    """How many records each held-out split gets: its share (validation's clamped to its bounds), at least one
    if asked for, and never all."""
    active = [s for s, f in fractions.items() if f > 0]
    targets = {s: round(n * f) for s, f in fractions.items()}
    if fractions["validation"] > 0:
        low, high = validation_bounds
        targets["validation"] = max(targets["validation"], low)
        if high is not None:
            targets["validation"] = min(targets["validation"], high)
    if n >= len(active) + 1:  # enough records for one in each asked-for split plus one to train on
        for s in active:
            targets[s] = max(targets[s], 1)
    while sum(targets.values()) > max(n - 1, 0):  # leave something to train on
        s = max(targets, key=lambda k: targets[k])
        targets[s] -= 1
    return targets


def _allocate(
    sizes: dict[str, int], fractions: dict[str, float], targets: dict[str, int], rng: random.Random
) -> dict[str, dict[str, int]]:
    """Per group, how many records go to validation and test, summing to the targets (largest remainders).

    A group keeps at least one record in train, and a group too small to give one to every asked-for split
    stays in train whole.
    """
    active = [s for s, f in fractions.items() if f > 0]
    out = {g: {s: 0 for s in fractions} for g in sizes}
    eligible = [g for g, size in sizes.items() if size >= len(active) + 1]
    total = sum(sizes[g] for g in eligible)
    for s in active:
        if not eligible or not targets[s]:
            continue
        quotas = {g: targets[s] * sizes[g] / total for g in eligible}
        for g in eligible:
            out[g][s] = min(math.floor(quotas[g]), _room(g, sizes, out))
        left = targets[s] - sum(out[g][s] for g in eligible)
        # Largest remainder first; random tie-break so that no class is always favoured.
        ranked = sorted(eligible, key=lambda g: (-(quotas[g] - math.floor(quotas[g])), rng.random()))
        while left > 0:
            progressed = False
            for g in ranked:
                if left and _room(g, sizes, out) > 0:
                    out[g][s] += 1
                    left -= 1
                    progressed = True
            if not progressed:
                break
    return out


def _room(g: str, sizes: dict[str, int], out: dict[str, dict[str, int]]) -> int:
    return sizes[g] - 1 - sum(out[g].values())  # one record always stays in train
