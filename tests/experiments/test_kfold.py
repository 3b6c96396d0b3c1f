"""k-fold: disjoint folds that cover the data, one training per fold, mean ± std computed across folds."""

from __future__ import annotations

import json
import statistics

from tests.conftest import tiny_config
from tuneforge.data.prepare import read_split
from tuneforge.experiments import kfold as K


def test_fold_indices_are_disjoint_cover_everything_and_stratify():
    strata = ["a"] * 9 + ["b"] * 6
    folds = K.fold_indices(15, 3, strata, seed=0)
    flat = sorted(i for f in folds for i in f)
    assert flat == list(range(15))
    for f in folds:
        assert sum(strata[i] == "b" for i in f) == 2  # each fold keeps the 9:6 proportion


def test_kfold_trains_each_fold_and_reports_mean_and_std(tiny_model_dir, capitals_file, tmp_path):
    cfg = tiny_config(
        tiny_model_dir,
        capitals_file,
        tmp_path / "run",
        "train.learning_rate=1e-2",
        "train.epochs=4",
        "train.num_threads=1",
    )
    summary = K.kfold(cfg, k=3, out=tmp_path / "kf", show=False)
    assert summary["k"] == 3 and sum(summary["fold_sizes"]) == summary["n_examples"]
    for name, m in summary["metrics"].items():
        assert len(m["folds"]) == 3, name
        assert abs(m["mean"] - statistics.fmean(m["folds"])) < 1e-9
        assert abs(m["std"] - statistics.stdev(m["folds"])) < 1e-9
    assert "best val loss" in summary["metrics"] and "exact match (strict)" in summary["metrics"]
    # Each fold trained on the other folds and was validated on its own: no example in both.
    for i in range(1, 4):
        d = tmp_path / "kf" / f"fold-{i}" / "run" / "data"
        train = {e.fingerprint() for e in read_split(d / "train.jsonl")}
        val = {e.fingerprint() for e in read_split(d / "validation.jsonl")}
        assert train and val and not train & val
    assert (
        json.loads((tmp_path / "kf" / "kfold.json").read_text())["metrics"].keys()
        == summary["metrics"].keys()
    )
    assert "±" in (tmp_path / "kf" / "kfold.md").read_text()
