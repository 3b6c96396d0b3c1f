"""Cleaning: whitespace, missing values, exact and near duplicates, length limits.

Runs on normalised `Example`s, in that order. Every record dropped, and every missing value filled, gets a
`Reject` saying why (a duplicate names the record it duplicates), so a report can account for every row.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from datasketch import MinHash, MinHashLSH

from tuneforge.config import CleanConfig
from tuneforge.data.schema import Example, Message, Reject

SHINGLE_WORDS = 3  # near duplicates compare sets of 3-word shingles (w-shingling)
NUM_PERM = 128


@dataclass
class CleanResult:
    examples: list[Example]
    rejects: list[Reject]  # dropped records, and records whose missing values were filled (action="filled")
    stats: dict[str, int] = field(default_factory=dict)  # counts per step and reason


@dataclass
class Duplicate:
    index: int  # position of the duplicate among the examples given
    of: int  # position of the earlier record it duplicates (the one kept)
    similarity: float  # 1.0 for an exact duplicate, else the Jaccard similarity of their shingles
    exact: bool


def clean(
    examples: Sequence[Example], cfg: CleanConfig, count_tokens: Callable[[Example], int] | None = None
) -> CleanResult:
    stats: Counter[str] = Counter(records_in=len(examples))
    rejects: list[Reject] = []
    kept = list(examples)

    if cfg.normalize_whitespace:
        kept = [_normalised(ex, stats) for ex in kept]
    kept = _missing_values(kept, cfg.missing, rejects, stats)
    if cfg.dedupe != "none":
        kept = _dedupe(kept, cfg, rejects, stats)
    if count_tokens is not None and (cfg.min_tokens > 0 or cfg.max_tokens is not None):
        kept = _length_filter(kept, cfg, count_tokens, rejects, stats)

    stats["records_out"] = len(kept)
    return CleanResult(kept, rejects, dict(stats))


# -------------------------------------------------------------------------------------------- whitespace
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]")  # all but \t and \n
_INNER_SPACES = re.compile(r"(?<=\S) {2,}")  # runs of spaces inside a line; leading indentation is kept


def normalize_text(text: str) -> str:
    """NFC, no control characters, single spaces inside lines, no trailing spaces; newlines and indentation kept.

    Indentation is kept because answers often hold code, where it is meaning, not noise.
    """
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    lines = [_INNER_SPACES.sub(" ", line).rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip()


def _normalised(ex: Example, stats: Counter[str]) -> Example:
    def msgs(group: list[Message] | None) -> list[Message] | None:
        if group is None:
            return None
        return [dataclasses.replace(m, content=normalize_text(m.content)) for m in group]

    new = dataclasses.replace(
        ex,
        messages=msgs(ex.messages) or [],
        chosen=msgs(ex.chosen),
        rejected=msgs(ex.rejected),
        text=normalize_text(ex.text) if ex.text is not None else None,
        label=normalize_text(ex.label) if ex.label is not None else None,
        meta=dict(ex.meta),
    )
    if new.fingerprint() != ex.fingerprint():
        stats["whitespace_normalised"] += 1
    return new


# ---------------------------------------------------------------------------------------- missing values
def _missing_values(
    examples: list[Example], policy: str, rejects: list[Reject], stats: Counter[str]
) -> list[Example]:
    kept = []
    for ex in examples:
        missing = ex.meta.get("missing") or []
        if not missing:
            kept.append(ex)
        elif policy == "drop":
            reason = f"missing value: {', '.join(missing)} is empty (clean.missing=drop)"
            rejects.append(Reject("clean", reason, ex.source, field=missing[0], record=ex))
            stats["dropped_missing"] += 1
        else:  # the normaliser already used an empty string; record that it did
            for name in missing:
                reason = f"missing value: {name} filled with an empty string"
                rejects.append(Reject("clean", reason, ex.source, field=name, record=ex, action="filled"))
            stats["filled"] += 1
            kept.append(ex)
    return kept


# -------------------------------------------------------------------------------------------- duplicates
def _dedupe(
    examples: list[Example], cfg: CleanConfig, rejects: list[Reject], stats: Counter[str]
) -> list[Example]:
    dups = find_duplicates(examples, near=cfg.dedupe == "near", threshold=cfg.near_threshold)
    drop = {d.index for d in dups}
    for d in dups:
        ex, first = examples[d.index], examples[d.of]
        where = first.source.where() if first.source else f"record {d.of + 1}"
        if d.exact:
            reason = f"exact duplicate of {where}"
            stats["duplicates_exact"] += 1
        else:
            reason = f"near duplicate ({d.similarity:.2f}) of {where}"
            stats["duplicates_near"] += 1
        rejects.append(Reject("clean", reason, ex.source, record=ex))
    return [ex for i, ex in enumerate(examples) if i not in drop]


def find_duplicates(
    examples: Sequence[Example], near: bool = True, threshold: float = 0.9
) -> list[Duplicate]:
    """Exact duplicates (same fingerprint) and, if `near`, near duplicates (MinHash LSH, confirmed exactly).

    The first occurrence is kept; every later copy is reported against it.
    """
    dups: list[Duplicate] = []
    first_of: dict[str, int] = {}
    unique: list[int] = []
    for i, ex in enumerate(examples):
        fp = ex.fingerprint()
        if fp in first_of:
            dups.append(Duplicate(i, first_of[fp], 1.0, exact=True))
        else:
            first_of[fp] = i
            unique.append(i)
    if near:
        dups += _near_duplicates(examples, unique, threshold)
    return sorted(dups, key=lambda d: d.index)


def _near_duplicates(examples: Sequence[Example], candidates: list[int], threshold: float) -> list[Duplicate]:
    # LSH finds candidates at a lower threshold than asked, because pairs just above the threshold are often
    # missed by LSH alone; every candidate is then confirmed with the exact Jaccard similarity of the shingles.
    lsh = MinHashLSH(threshold=max(0.5, threshold - 0.15), num_perm=NUM_PERM)
    kept_shingles: dict[int, set[str]] = {}
    dups: list[Duplicate] = []
    for i in candidates:
        shingles = shingle(dedupe_text(examples[i]))
        if not shingles:
            continue
        mh = MinHash(num_perm=NUM_PERM, seed=1)
        mh.update_batch([s.encode("utf-8") for s in shingles])
        best, best_sim = None, 0.0
        for key in lsh.query(mh):
            j = int(key)
            sim = _jaccard(shingles, kept_shingles[j])
            if sim > best_sim or (sim == best_sim and best is not None and j < best):
                best, best_sim = j, sim
        if best is not None and best_sim >= threshold:
            dups.append(Duplicate(i, best, best_sim, exact=False))
        else:
            lsh.insert(str(i), mh)
            kept_shingles[i] = shingles
    return dups


def dedupe_text(ex: Example) -> str:
    """The text compared for near duplicates: everything but system turns.

    A long system prompt shared by every record would otherwise make all of them look alike.
    """
    strip = dataclasses.replace(
        ex,
        messages=[m for m in ex.messages if m.role != "system"],
        chosen=ex.chosen,
        rejected=ex.rejected,
    )
    return strip.all_text()


# Ideographs and kana are written without spaces: each character counts as a word.
_WORD = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+"
)


def shingle(text: str, k: int = SHINGLE_WORDS) -> set[str]:
    """Word k-grams of lower-cased text, punctuation ignored; a text shorter than k words is one shingle."""
    words = _WORD.findall(text.lower())
    if len(words) <= k:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


# ------------------------------------------------------------------------------------------------ length
def _length_filter(
    examples: list[Example],
    cfg: CleanConfig,
    count_tokens: Callable[[Example], int],
    rejects: list[Reject],
    stats: Counter[str],
) -> list[Example]:
    kept = []
    for ex in examples:
        n = count_tokens(ex)
        if n < cfg.min_tokens:
            reason, counter = f"too short: {n} tokens < clean.min_tokens={cfg.min_tokens}", "too_short"
        elif cfg.max_tokens is not None and n > cfg.max_tokens:
            reason, counter = f"too long: {n} tokens > clean.max_tokens={cfg.max_tokens}", "too_long"
        else:
            kept.append(ex)
            continue
        rejects.append(Reject("clean", reason, ex.source, record=ex))
        stats[counter] += 1
    return kept
