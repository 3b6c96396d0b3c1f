"""Task metrics on generated answers, from the libraries of the field (sacrebleu, rouge-score, scikit-learn).

Two readings of every answer, so that a gain is more than output format:
- strict:  the answer as a program would consume it — the exact text (whitespace-normalised), the exact label,
           or JSON that parses and whose fields equal the reference's;
- lenient: the right answer anywhere in the reply, format ignored — the reference text contained in the reply,
           the first known label the reply mentions, each JSON field's value mentioned anywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

NONE = "<none>"  # prediction when no label can be read from the reply


def norm(s: str) -> str:
    return " ".join((s or "").split())


def parse_json_object(s: str) -> dict | None:
    """The first JSON object in the text (models often wrap it in prose or code fences)."""
    s = (s or "").strip()
    try:
        v = json.loads(s)
        return v if isinstance(v, dict) else None
    except json.JSONDecodeError:
        pass
    m = re.search(r"\{.*?\}", s, re.S)
    if m:
        try:
            v = json.loads(m.group(0))
            return v if isinstance(v, dict) else None
        except json.JSONDecodeError:
            return None
    return None


def _strict_json(s: str) -> dict | None:
    s = (s or "").strip()
    try:
        v = json.loads(s)
    except json.JSONDecodeError:
        return None
    return v if isinstance(v, dict) else None


def is_label_like(refs: Sequence[str]) -> bool:
    """Few distinct short answers: a classification task in disguise."""
    if not refs:
        return False
    distinct = set(map(norm, refs))
    short = all(len(r.split()) <= 4 for r in distinct)
    # On small test sets every value may be rare; on larger ones a label must repeat.
    return short and len(distinct) <= 50 and (len(refs) < 20 or len(distinct) <= len(refs) // 2)


def json_fields(refs: Sequence[str]) -> list[str] | None:
    """Field names if every reference is a JSON object with the same keys."""
    objs = [_strict_json(r) for r in refs]
    if not objs or any(o is None for o in objs):
        return None
    keys = list(objs[0].keys())
    return keys if all(list(o.keys()) == keys for o in objs) else None


def _mentioned_label(reply: str, labels: Sequence[str]) -> str:
    """The label mentioned first in the reply (whole word, any case), or NONE."""
    best, pos = NONE, None
    low = (reply or "").lower()
    for lab in sorted(labels, key=len, reverse=True):
        m = re.search(rf"(?<![\w-]){re.escape(lab.lower())}(?![\w-])", low)
        if m and (pos is None or m.start() < pos):
            best, pos = lab, m.start()
    return best


def _strict_label(reply: str, labels: Sequence[str]) -> str:
    r = norm(reply).strip(" .!\"'`").lower()
    for lab in labels:
        if r == lab.lower():
            return lab
    return NONE


def classification_scores(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=list(labels), average="macro", zero_division=0
    )
    pc, rc, fc, sc = precision_recall_fscore_support(y_true, y_pred, labels=list(labels), zero_division=0)
    cm_labels = list(labels) + ([NONE] if NONE in y_pred else [])
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_precision": float(p),
        "macro_recall": float(r),
        "macro_f1": float(f),
        "per_class": {
            lab: {
                "precision": float(pc[i]),
                "recall": float(rc[i]),
                "f1": float(fc[i]),
                "support": int(sc[i]),
            }
            for i, lab in enumerate(labels)
        },
        "confusion": {
            "labels": cm_labels,
            "matrix": confusion_matrix(y_true, y_pred, labels=cm_labels).tolist(),
        },
    }


def text_scores(refs: Sequence[str], preds: Sequence[str]) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    bleu = sacrebleu.corpus_bleu(list(preds), [list(refs)]).score
    chrf = sacrebleu.corpus_chrf(list(preds), [list(refs)]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rl = [scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(refs, preds, strict=True)]
    return {"bleu": bleu, "chrf": chrf, "rouge_l": 100 * sum(rl) / max(len(rl), 1)}


def task_kind(refs: Sequence[str]) -> str:
    if json_fields(refs):
        return "json"
    if is_label_like(refs):
        return "label"
    return "text"


def score(refs: Sequence[str], preds: Sequence[str], metrics: Sequence[str] = ("auto",)) -> dict[str, Any]:
    """All metrics for one model's answers. Headline numbers are in [0, 100]."""
    kind = task_kind(refs)
    want = set(metrics)
    auto = "auto" in want
    out: dict[str, Any] = {"n": len(refs), "task": kind}

    strict_em = [_answers_equal(r, p) for r, p in zip(refs, preds, strict=True)]
    lenient_em = [_answer_in_reply(r, p, kind) for r, p in zip(refs, preds, strict=True)]
    out["exact_match"] = 100 * _mean(strict_em)
    out["lenient_match"] = 100 * _mean(lenient_em)

    if kind == "json" and (auto or "json" in want or "accuracy" in want or "f1" in want):
        fields = json_fields(refs) or []
        out["json_valid"] = 100 * _mean([_strict_json(p) is not None for p in preds])
        out["fields"] = {}
        for key in fields:
            truth = [str(_strict_json(r)[key]) for r in refs]
            if not is_label_like(truth):
                continue
            labels = sorted(set(truth))
            strict = [_field_strict(p, key, labels) for p in preds]
            lenient = [_field_lenient(p, key, labels) for p in preds]
            out["fields"][key] = {
                "strict": classification_scores(truth, strict, labels),
                "lenient": classification_scores(truth, lenient, labels),
            }
    if kind == "label" and (auto or "accuracy" in want or "f1" in want):
        labels = sorted(set(map(norm, refs)))
        truth = [norm(r) for r in refs]
        out["labels"] = {
            "strict": classification_scores(truth, [_strict_label(p, labels) for p in preds], labels),
            "lenient": classification_scores(truth, [_mentioned_label(p, labels) for p in preds], labels),
        }
    if (kind == "text" and auto) or want & {"bleu", "chrf", "rouge_l"}:
        out.update(text_scores(refs, preds))
    return out


def headline(m: dict[str, Any]) -> dict[str, float]:
    """The rows of the before/after table: name → value in [0, 100]."""
    rows = {"exact match (strict)": m["exact_match"], "answer in reply (lenient)": m["lenient_match"]}
    if "json_valid" in m:
        rows["valid JSON"] = m["json_valid"]
    for key, f in m.get("fields", {}).items():
        rows[f"{key} accuracy (strict)"] = 100 * f["strict"]["accuracy"]
        rows[f"{key} accuracy (lenient)"] = 100 * f["lenient"]["accuracy"]
        rows[f"{key} macro-F1 (strict)"] = 100 * f["strict"]["macro_f1"]
    if "labels" in m:
        rows["accuracy (strict)"] = 100 * m["labels"]["strict"]["accuracy"]
        rows["accuracy (lenient)"] = 100 * m["labels"]["lenient"]["accuracy"]
        rows["macro-F1 (strict)"] = 100 * m["labels"]["strict"]["macro_f1"]
        rows["macro precision (strict)"] = 100 * m["labels"]["strict"]["macro_precision"]
        rows["macro recall (strict)"] = 100 * m["labels"]["strict"]["macro_recall"]
    for k, name in (("bleu", "BLEU"), ("rouge_l", "ROUGE-L"), ("chrf", "chrF")):
        if k in m:
            rows[name] = m[k]
    return rows


def _mean(xs: Sequence[bool]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _answers_equal(ref: str, pred: str) -> bool:
    if norm(ref) == norm(pred):
        return True
    r, p = _strict_json(ref), _strict_json(pred)
    return r is not None and r == p


def _answer_in_reply(ref: str, pred: str, kind: str) -> bool:
    if kind == "json":
        r = _strict_json(ref) or {}
        low = (pred or "").lower()
        return all(re.search(rf"(?<![\w-]){re.escape(str(v).lower())}(?![\w-])", low) for v in r.values())
    return norm(ref).lower() in norm(pred).lower()


def _field_strict(pred: str, key: str, labels: Sequence[str]) -> str:
    obj = _strict_json(pred)
    v = None if obj is None else obj.get(key)
    return str(v) if v is not None and str(v) in labels else NONE


def _field_lenient(pred: str, key: str, labels: Sequence[str]) -> str:
    obj = parse_json_object(pred)
    if obj is not None and str(obj.get(key)) in labels:
        return str(obj.get(key))
    return _mentioned_label(pred, labels)
