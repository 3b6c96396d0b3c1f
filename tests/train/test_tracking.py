"""Experiment tracking: a run's metrics land in TensorBoard event files and in a local MLflow store."""

from __future__ import annotations

import json

from tests.conftest import tiny_config
from tuneforge.recipes.run import train as run_training


def _tracked(tiny_model_dir, capitals_file, tmp_path, experiment: str, backends: str, *overrides: str):
    """(MLflow store URI, config) of a one-thread tiny run tracked to `backends` in a store beside it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tiny_config(
        tiny_model_dir,
        capitals_file,
        tmp_path / "run",
        *overrides,
        "train.num_threads=1",
        f"tracking.backends={backends}",
        f"tracking.mlflow_uri={uri}",
        f"tracking.experiment={experiment}",
    )
    return uri, cfg


def test_metrics_go_to_tensorboard_and_mlflow(tiny_model_dir, capitals_file, tmp_path):
    import mlflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri, cfg = _tracked(
        tiny_model_dir, capitals_file, tmp_path, "capitals", "[tensorboard, mlflow]", "train.epochs=2"
    )
    result, ft = run_training(cfg)
    ft.loop.cleanup()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    vals = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    assert losses and vals

    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tb = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in tb] == [s for s, _ in losses]
    assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(tb, losses, strict=True))
    assert [e.step for e in acc.Scalars("val/val_loss")] == [s for s, _ in vals]

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("capitals")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.learning_rate"] == str(cfg.train.learning_rate)
    hist = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in hist] == [s for s, _ in vals]
    assert abs(run.data.metrics["final_best_val_loss"] - result.best_val_loss) < 1e-9


def test_tracking_off_by_default_writes_nothing(tiny_model_dir, capitals_file, tmp_path):
    cfg = tiny_config(
        tiny_model_dir, capitals_file, tmp_path / "run", "train.max_steps=2", "train.num_threads=1"
    )
    _, ft = run_training(cfg)
    ft.loop.cleanup()
    assert not (tmp_path / "run" / "tensorboard").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_a_run_that_crashes_is_marked_failed_in_mlflow(tiny_model_dir, capitals_file, tmp_path):
    import mlflow
    import pytest

    uri, cfg = _tracked(tiny_model_dir, capitals_file, tmp_path, "crash", "[mlflow]", "train.max_steps=4")

    def crash(kind, payload):
        if kind == "metrics" and payload.get("step") == 2:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        run_training(cfg, on_event=crash)
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("crash").experiment_id])
    assert run.info.status == "FAILED"
