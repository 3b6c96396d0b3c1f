"""Scoring a classification head: its predictions on held-out texts next to the majority class of the training
split, with accuracy, per-class precision/recall/F1 and a confusion matrix (eval/metrics.py)."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from tuneforge.data.collate import collate_labeled
from tuneforge.data.schema import Example
from tuneforge.data.tokenize import Labeled
from tuneforge.eval.metrics import classification_scores


@torch.no_grad()
def predict_rows(model, tok, rows: Sequence[Labeled], batch_size: int, autocast=contextlib.nullcontext):
    """(logits, label indices) of encoded rows, in order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(rows), batch_size):
        b = collate_labeled(rows[i : i + batch_size], tok)
        b.pop("labels")
        with autocast():
            out.append(model(**{k: v.to(device) for k, v in b.items()}).logits.float().cpu())
    if was_training:
        model.train()
    logits = torch.cat(out) if out else torch.empty(0, model.config.num_labels)
    return logits, torch.tensor([r.label for r in rows], dtype=torch.long)


def classification_report(
    predict: Callable, labels: list[str], rows: Sequence[Labeled], train_examples: Sequence[Example]
) -> dict[str, Any]:
    """The tuned classifier's scores next to the majority class of the training split."""
    t0 = time.time()
    logits, y = predict(rows)
    ms = 1000 * (time.time() - t0) / max(len(rows), 1)
    truth = [labels[i] for i in y.tolist()]
    pred = [labels[i] for i in logits.argmax(-1).tolist()] if len(rows) else []
    majority = (
        Counter(str(e.label) for e in train_examples).most_common(1)[0][0] if train_examples else labels[0]
    )
    variants = [
        {
            "key": "majority",
            "title": f"majority class ({majority})",
            "metrics": classification_scores(truth, [majority] * len(truth), labels),
        },
        {
            "key": "tuned",
            "title": "tuned classifier",
            "metrics": classification_scores(truth, pred, labels),
            "ms_per_example": ms,
        },
    ]
    return {
        "task": "classification",
        "labels": labels,
        "n_test": len(rows),
        "variants": variants,
        "gain": {"accuracy": 100 * (variants[1]["metrics"]["accuracy"] - variants[0]["metrics"]["accuracy"])},
    }


def classification_headline(scores: dict[str, Any]) -> dict[str, float]:
    """The rows a classifier adds to a table of runs (k-fold, augmentation): name → value in [0, 100]."""
    return {"accuracy": 100 * scores["accuracy"], "macro-F1": 100 * scores["macro_f1"]}
