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


def test_kfold_over_a_classifier_config_scores_the_head_on_each_fold(tiny_encoder_dir, tmp_path):
    from tests.conftest import classifier_config

    cfg = classifier_config(
        tiny_encoder_dir, tmp_path, tmp_path / "run", "train.epochs=4", "train.learning_rate=1e-2"
    )
    summary = K.kfold(cfg, k=3, out=tmp_path / "kf", show=False)
    assert {"best val loss", "accuracy", "macro-F1"} <= set(summary["metrics"])
    assert "val perplexity" not in summary["metrics"]  # a classification loss has no perplexity
    for m in summary["metrics"].values():
        assert len(m["folds"]) == 3
    assert summary["metrics"]["accuracy"]["mean"] > 50  # the head learned (three balanced classes: chance 33)
    for i in range(1, 4):
        run = tmp_path / "kf" / f"fold-{i}" / "run"
        assert (run / "model" / "labels.json").is_file()
        train = {e.fingerprint() for e in read_split(run / "data" / "train.jsonl")}
        val = {e.fingerprint() for e in read_split(run / "data" / "validation.jsonl")}
        assert train and val and not train & val


def test_kfold_and_augmentation_refuse_a_staged_config(tiny_model_dir, capitals_file, tmp_path):
    import pytest

    from tuneforge.errors import ConfigError
    from tuneforge.experiments import augment as A

    cfg = tiny_config(
        tiny_model_dir, capitals_file, tmp_path / "run", 'stages=[{"name": "a"}, {"name": "b"}]'
    )
    with pytest.raises(ConfigError, match="2 stages") as e:
        K.kfold(cfg, k=3, out=tmp_path / "kf", show=False)
    assert "stage you want to improve" in str(e.value)
    with pytest.raises(ConfigError, match="2 stages"):
        A.augment(cfg, n_paraphrases=0, out=tmp_path / "aug", show=False)
    assert not (tmp_path / "kf").exists() and not (tmp_path / "aug").exists()
