"""The feedback loop's arithmetic, on plain records: per-arm figures of a deployment with the test that says
when two arms really differ, and training sets made from what users said about the answers.

- **Per arm**: requests, tokens, latency, the thumbs-up rate with its 95% Wilson interval (it stays inside
  [0, 1] and behaves with few ratings, where the normal interval does not), the mean 1-5 score.
- **Between arms**: a two-sided two-proportion z-test of each arm's thumbs-up rate against the first arm (the
  control, usually the version in production), with the pooled rate under the null hypothesis. The difference
  is called real when p < alpha (0.05) and each arm has at least `MIN_EACH` ratings on either side (the normal
  approximation needs them); until then the answer is "not enough ratings yet", whatever p says.
- **Datasets**: KTO rows (the conversation and `label` true/false) from each answer's verdict; DPO pairs from
  corrections (the correction preferred over the answer) and from two answers to the same prompt that users
  rated differently (A/B arms, or one model asked twice); SFT rows from corrections and from answers rated up.
  Every answer that gives nothing is counted with its reason, and repeated rows are dropped and counted.

A verdict joins all users' feedback on one answer: a thumbs-up or a score of 4-5 is one vote for, a thumbs-down or
a score of 1-2 one against (a 3 is neutral); more votes for than against make it desirable, fewer undesirable,
and a tie is "conflicting ratings".
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALPHA = 0.05
MIN_EACH = 5  # ratings for and against per arm before the z-test's normal approximation is trusted
Z95 = 1.959963984540054
KINDS = ("kto", "dpo", "sft")


# ------------------------------------------------------------------------------------------- statistics
def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (0, 1 when there are no trials)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p) for H0: the two rates are equal, with the pooled rate's standard error."""
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def votes(feedback: Iterable[Any]) -> tuple[int, int]:
    """(for, against) from feedback rows with `thumbs` and `score`."""
    up = down = 0
    for f in feedback:
        if f.thumbs == "up" or (f.thumbs is None and f.score is not None and f.score >= 4):
            up += 1
        elif f.thumbs == "down" or (f.thumbs is None and f.score is not None and f.score <= 2):
            down += 1
    return up, down


@dataclass
class ArmFigures:
    model: str
    weight: float  # its share of the traffic now (0 for a shadow)
    shadow: bool = False
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    ratings: int = 0  # votes for or against
    thumbs_up: int = 0
    thumbs_down: int = 0
    up_rate: float | None = None
    up_rate_ci95: tuple[float, float] = (0.0, 1.0)
    scores: int = 0
    mean_score: float | None = None


@dataclass
class ArmComparison:
    model: str
    control: str
    difference: float | None  # up_rate(model) - up_rate(control)
    z: float
    p_value: float
    verdict: str  # "better" | "worse" | "no significant difference" | "not enough ratings yet"


def arm_figures(
    arms: Sequence[dict[str, Any]],
    shadow: str | None,
    requests: Iterable[Any],
    feedback: dict[str, list[Any]],
) -> list[ArmFigures]:
    """Figures per arm (and per shadow model) from the routing log's rows (`model`, `shadow`, `latency_ms`,
    tokens, `completion_id`) and the feedback on each stored completion id."""
    total = sum(a["weight"] for a in arms) or 1.0
    out = {(a["model"], False): ArmFigures(a["model"], a["weight"] / total) for a in arms}
    if shadow:
        out.setdefault((shadow, True), ArmFigures(shadow, 0.0, shadow=True))
    latencies: dict[tuple[str, bool], list[float]] = {}
    scores: dict[tuple[str, bool], list[int]] = {}
    for r in requests:
        key = (r.model, bool(r.shadow))
        fig = out.setdefault(key, ArmFigures(r.model, 0.0, shadow=bool(r.shadow)))  # an arm since removed
        fig.requests += 1
        fig.prompt_tokens += r.prompt_tokens
        fig.completion_tokens += r.completion_tokens
        latencies.setdefault(key, []).append(r.latency_ms)
        rows = feedback.get(r.completion_id or "", [])
        up, down = votes(rows)
        fig.thumbs_up += up
        fig.thumbs_down += down
        scores.setdefault(key, []).extend(f.score for f in rows if f.score is not None)
    for key, fig in out.items():
        fig.ratings = fig.thumbs_up + fig.thumbs_down
        if fig.ratings:
            fig.up_rate = fig.thumbs_up / fig.ratings
        fig.up_rate_ci95 = wilson(fig.thumbs_up, fig.ratings)
        fig.latency_ms_p50 = _percentile(latencies.get(key, []), 0.5)
        fig.latency_ms_p95 = _percentile(latencies.get(key, []), 0.95)
        s = scores.get(key, [])
        fig.scores = len(s)
        fig.mean_score = sum(s) / len(s) if s else None
    return list(out.values())


def compare_arms(figures: Sequence[ArmFigures], alpha: float = ALPHA) -> list[ArmComparison]:
    """Each arm (shadows included) against the first live arm, the control."""
    live = [f for f in figures if not f.shadow]
    if not live:
        return []
    control = live[0]
    out = []
    for f in figures:
        if f is control:
            continue
        z, p = two_proportion_z(f.thumbs_up, f.ratings, control.thumbs_up, control.ratings)
        enough = min(f.thumbs_up, f.thumbs_down, control.thumbs_up, control.thumbs_down) >= MIN_EACH
        if not enough:
            verdict = "not enough ratings yet"
        elif p >= alpha:
            verdict = "no significant difference"
        else:
            verdict = "better" if z > 0 else "worse"
        diff = None if f.up_rate is None or control.up_rate is None else f.up_rate - control.up_rate
        out.append(ArmComparison(f.model, control.model, diff, z, p, verdict))
    return out


TEST = (
    f"two-sided two-proportion z-test of each arm's thumbs-up rate against the first arm (pooled rate); a "
    f"difference is called when p < {ALPHA} and each arm has at least {MIN_EACH} ratings up and {MIN_EACH} down"
)


def deployment_stats(
    name: str, arms: Sequence[dict[str, Any]], shadow: str | None, requests: Sequence[Any], feedback: dict
) -> dict[str, Any]:
    """A deployment's figures as the API and the CLI show them."""
    from dataclasses import asdict

    figures = arm_figures(arms, shadow, requests, feedback)
    return {
        "name": name,
        "test": TEST,
        "arms": [asdict(f) for f in figures],
        "comparisons": [asdict(c) for c in compare_arms(figures)],
    }


# --------------------------------------------------------------------------------------------- datasets
@dataclass
class FeedbackDatasets:
    kto: list[dict[str, Any]] = field(default_factory=list)
    dpo: list[dict[str, Any]] = field(default_factory=list)
    sft: list[dict[str, Any]] = field(default_factory=list)
    used: Counter = field(default_factory=Counter)  # "kto: thumbs", "dpo: correction" ...
    skipped: Counter = field(default_factory=Counter)  # reason → answers (or rows) skipped

    def jsonl(self, kind: str) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in getattr(self, kind))

    def write(self, folder: Path) -> dict[str, Path]:
        """kto.jsonl, dpo.jsonl, sft.jsonl (those with rows) in `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for kind in KINDS:
            if getattr(self, kind):
                out[kind] = folder / f"{kind}.jsonl"
                out[kind].write_text(self.jsonl(kind))
        return out

    def counts(self) -> dict[str, Any]:
        return {
            "kto": len(self.kto),
            "dpo": len(self.dpo),
            "sft": len(self.sft),
            "used": dict(self.used),
            "skipped": dict(self.skipped),
        }


def _chat(prompt: list[dict[str, Any]], answer: str) -> list[dict[str, Any]]:
    return [*prompt, {"role": "assistant", "content": answer}]


def _pair(prompt: list[dict[str, Any]], chosen: str, rejected: str) -> dict[str, Any]:
    # OpenAI's preference shape, which the service's DPO jobs and the library's readers both take
    return {
        "input": {"messages": prompt},
        "preferred_output": [{"role": "assistant", "content": chosen}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


class _Unique:
    """Appends a row unless the same row is already there (counted as a duplicate of its kind)."""

    def __init__(self, out: FeedbackDatasets):
        self.out, self.seen = out, set()

    def add(self, kind: str, row: dict[str, Any], why: str) -> None:
        key = (kind, json.dumps(row, sort_keys=True, ensure_ascii=False))
        if key in self.seen:
            self.out.skipped[f"{kind}: duplicate row"] += 1
            return
        self.seen.add(key)
        getattr(self.out, kind).append(row)
        self.out.used[f"{kind}: {why}"] += 1


def build_datasets(answers: Iterable[Any]) -> FeedbackDatasets:
    """Training rows from answers with their feedback: each answer has `id`, `model`, `prompt` (the request's
    messages), `text` (its first choice) and `feedback` (rows with thumbs, score, correction)."""
    out = FeedbackDatasets()
    rows = _Unique(out)
    by_prompt: dict[str, list[tuple[float, Any]]] = {}
    for a in answers:
        if not a.feedback:
            out.skipped["no feedback"] += 1
            continue
        if not a.text.strip():
            out.skipped["empty answer"] += 1
            continue
        corrections = [f.correction for f in a.feedback if f.correction and f.correction.strip()]
        for c in corrections:
            if c.strip() == a.text.strip():
                out.skipped["correction equals the answer"] += 1
                continue
            rows.add("dpo", _pair(a.prompt, c, a.text), "correction over the answer")
            rows.add("sft", {"messages": _chat(a.prompt, c)}, "correction")
        up, down = votes(a.feedback)
        if up == down:
            if up or not corrections:  # a correction alone is no verdict, but it was used above
                out.skipped["conflicting ratings" if up else "no thumbs or score (comment only)"] += 1
            continue
        good = up > down
        rows.add("kto", {"messages": _chat(a.prompt, a.text), "label": good}, "rated answer")
        if good:
            rows.add("sft", {"messages": _chat(a.prompt, a.text)}, "answer rated up")
        key = json.dumps(a.prompt, sort_keys=True, ensure_ascii=False)
        by_prompt.setdefault(key, []).append(((up - down) / (up + down), a))
    # Two answers to one prompt that users rated apart: the better one preferred.
    for group in by_prompt.values():
        if len(group) < 2:
            continue
        group.sort(key=lambda t: t[0])
        (low, worst), (high, best) = group[0], group[-1]
        if high > 0 > low and best.text.strip() != worst.text.strip():
            why = "A/B: arms rated apart" if best.model != worst.model else "same prompt rated apart"
            rows.add("dpo", _pair(best.prompt, best.text, worst.text), why)
    return out
