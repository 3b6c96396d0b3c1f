"""Sweeps: every trial trains, poor trials are pruned early, and best.yaml holds the best trial's parameters."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from tests.conftest import tiny_config
from tuneforge.config import dump_config
from tuneforge.errors import ConfigError
from tuneforge.experiments import sweep as S
from tuneforge.recipes.build import load_config


@pytest.fixture
def base_yaml(tiny_model_dir, capitals_file, tmp_path):
    cfg = tiny_config(
        tiny_model_dir,
        capitals_file,
        tmp_path / "unused",
        "train.epochs=3",
        "train.eval_every=2",
        "train.num_threads=1",
        "train.memory_check=false",
    )
    p = tmp_path / "base.yaml"
    p.write_text(dump_config(cfg))
    return p


def _sweep_file(tmp_path, base_yaml, **over):
    spec = {
        "config": base_yaml.name,
        "out": str(tmp_path / "sweep"),
        "sampler": "grid",
        "prune": True,
        "pruner": {"startup_trials": 1, "warmup_evals": 0},
        # The good learning rate first: the tiny learning rates after it fall behind and are pruned.
        "space": {"train.learning_rate": [1e-2, 1e-6, 3e-7]},
        **over,
    }
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_grid_sweep_prunes_poor_trials_and_writes_the_best_config(tmp_path, base_yaml):
    sweep, base = S.load_sweep(_sweep_file(tmp_path, base_yaml))
    summary = S.run_sweep(sweep, base, show=False)
    trials = summary["trials"]
    assert [t["train.learning_rate"] for t in trials] == [1e-2, 1e-6, 3e-7]
    assert trials[0]["state"] == "complete"
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned and all(t["steps"] < trials[0]["steps"] for t in pruned)  # stopped early, not after
    assert summary["best"]["params"] == {"train.learning_rate": 1e-2}
    out = tmp_path / "sweep"
    best = load_config(out / "best.yaml")
    assert best.train.learning_rate == 1e-2 and best.train.epochs == 3
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [r["state"] for r in rows] == [t["state"] for t in trials]
    assert json.loads((out / "sweep.json").read_text())["best"]["trial"] == 0
    assert (out / "sweep.png").stat().st_size > 10_000
    assert not (out / "trial-000" / "checkpoints").exists()  # disk is given back


def test_random_sweep_samples_inside_the_ranges_and_picks_the_lowest_loss(tmp_path, base_yaml):
    f = _sweep_file(
        tmp_path,
        base_yaml,
        sampler="random",
        trials=2,
        prune=False,
        space={"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "train.batch_size": [4, 8]},
    )
    sweep, base = S.load_sweep(f, ["set=[train.epochs=1]"])
    summary = S.run_sweep(sweep, base, show=False)
    values = [t["value"] for t in summary["trials"]]
    assert summary["best"]["value"] == min(values)
    for t in summary["trials"]:
        assert 1e-4 <= t["train.learning_rate"] <= 1e-2 and t["train.batch_size"] in (4, 8)
        assert t["steps"] == (44 + t["train.batch_size"] - 1) // t["train.batch_size"]  # epochs=1 applied


def test_sweep_file_errors_are_one_line_with_a_fix(tmp_path, base_yaml):
    with pytest.raises(ConfigError, match="grid search needs a list"):
        S.load_sweep(_sweep_file(tmp_path, base_yaml, space={"train.learning_rate": {"low": 1, "high": 2}}))
    with pytest.raises(ConfigError, match="unknown config key"):
        S.load_sweep(_sweep_file(tmp_path, base_yaml, space={"train.learnig_rate": [1e-3]}))
    with pytest.raises(ConfigError, match="does not exist"):
        S.load_sweep(tmp_path / "nope.yaml")


def test_shipped_sweep_files_are_valid():
    from tests.conftest import REPO

    files = sorted((REPO / "examples" / "sweeps").glob("*.yaml"))
    assert files
    for f in files:
        sweep, base = S.load_sweep(f)
        assert sweep.space and base.data.train


def _sweep_over(tmp_path, cfg, space) -> dict:
    base = tmp_path / "base.yaml"
    base.write_text(dump_config(cfg))
    spec = {
        "config": base.name,
        "out": str(tmp_path / "sweep"),
        "sampler": "grid",
        "prune": False,
        "space": space,
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    sweep, base_cfg = S.load_sweep(tmp_path / "sweep.yaml")
    return S.run_sweep(sweep, base_cfg, show=False)


def test_a_sweep_over_a_classifier_config_trains_classification_heads(tiny_encoder_dir, tmp_path):
    from tests.conftest import classifier_config

    cfg = classifier_config(
        tiny_encoder_dir, tmp_path, tmp_path / "unused", "train.epochs=2", "train.eval_every=4"
    )
    summary = _sweep_over(tmp_path, cfg, {"train.learning_rate": [1e-2, 1e-3]})
    for t in summary["trials"]:
        run = tmp_path / "sweep" / f"trial-{t['trial']:03d}"
        done = json.loads((run / "train_done.json").read_text())
        assert t["state"] == "complete" and t["value"] == done["best_val_loss"]
        assert (run / "model" / "labels.json").is_file()  # a classification head, not a language model
        assert not (run / "checkpoints").exists()
    assert load_config(tmp_path / "sweep" / "best.yaml").method.name == "classifier"


def test_a_sweep_over_a_staged_config_trains_every_stage_and_scores_the_last(
    tiny_model_dir, capitals_file, tmp_path
):
    stages = [{"name": "warmup", "method": "lora"}, {"name": "task"}]
    cfg = tiny_config(
        tiny_model_dir,
        capitals_file,
        tmp_path / "unused",
        "train.max_steps=4",
        "train.eval_every=2",
        "train.num_threads=1",
        "eval.general=null",
        f"stages={json.dumps(stages)}",
    )
    summary = _sweep_over(tmp_path, cfg, {"train.learning_rate": [1e-2, 3e-3]})
    for t in summary["trials"]:
        run = tmp_path / "sweep" / f"trial-{t['trial']:03d}"
        first, last = run / "stage-1-warmup", run / "stage-2-task"
        assert (first / "merged" / "config.json").is_file() and (last / "model").is_dir()
        assert t["value"] == json.loads((last / "train_done.json").read_text())["best_val_loss"]
        assert not (first / "checkpoints").exists() and not (last / "checkpoints").exists()
    assert len(summary["trials"]) == 2 and summary["best"]["value"] == min(
        t["value"] for t in summary["trials"]
    )
