"""Experiment tracking: a run's metrics and messages also go to TensorBoard and/or MLflow.

Hooked through the training loop's event callback (`Loop.on_event`), so the loop knows nothing of either
tool. Enabled per run with `tracking.backends: [tensorboard, mlflow]`:

- TensorBoard: event files in `<run_dir>/tensorboard` (`tensorboard --logdir runs`).
- MLflow: parameters (the resolved config, flattened), every metric per step and the final summary, in the
  store `tracking.mlflow_uri` names — by default the SQLite file `mlflow.db` beside the run folder (a local file
  store; `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`). `MLFLOW_TRACKING_URI` is honoured too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.errors import ConfigError
from tuneforge.rundir import RunDir

EventFn = Callable[[str, dict[str, Any]], None]

# Keys of a metrics row that are bookkeeping, not metrics.
_NOT_METRICS = {"step", "epoch", "tokens", "seconds"}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def default_mlflow_uri(run_dir: Path) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + str(Path(run_dir).resolve().parent / "mlflow.db")


class Tracker:
    """Receives the loop's events and forwards them to the enabled backends. `close()` ends the MLflow run."""

    def __init__(
        self,
        backends: list[str],
        run_dir: Path,
        params: dict[str, Any],
        experiment: str = "tuneforge",
        mlflow_uri: str | None = None,
        run_name: str | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.tb = None
        self.mlflow = None
        self.closed = False
        if "tensorboard" in backends:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "tracking.backends has tensorboard but the tensorboard package is not installed",
                    "pip install 'tuneforge[experiments]' (or pip install tensorboard)",
                ) from None
            self.tb = SummaryWriter(log_dir=str(RunDir(self.run_dir).tensorboard), flush_secs=10)
            self.tb.add_text("config", "```\n" + "\n".join(f"{k}: {v}" for k, v in params.items()) + "\n```")
        if "mlflow" in backends:
            try:
                import mlflow
            except ImportError:
                raise ConfigError(
                    "tracking.backends has mlflow but mlflow is not installed",
                    "pip install 'tuneforge[experiments]' (or pip install mlflow-skinny)",
                ) from None
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)
            self.mlflow_uri = mlflow_uri or default_mlflow_uri(self.run_dir)
            if self.mlflow_uri.startswith("file:"):
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for an opt-in
            client = mlflow.MlflowClient(tracking_uri=self.mlflow_uri)
            exp = client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
            run = client.create_run(exp_id, run_name=run_name or self.run_dir.name)
            self.mlflow, self.mlflow_run = client, run.info.run_id
            # MLflow caps a parameter value at 6000 characters and a batch at 100 parameters.
            items = [(k, str(v)[:5000]) for k, v in params.items()]
            from mlflow.entities import Param

            for i in range(0, len(items), 100):
                client.log_batch(self.mlflow_run, params=[Param(k, v) for k, v in items[i : i + 100]])

    def __call__(self, kind: str, payload: dict[str, Any]) -> None:
        if self.closed:
            return
        if kind == "metrics":
            step = int(payload.get("step", 0))
            values = {
                k: float(v)
                for k, v in payload.items()
                if k not in _NOT_METRICS and isinstance(v, int | float) and not isinstance(v, bool)
            }
            if self.tb is not None:
                for k, v in values.items():
                    self.tb.add_scalar(_tb_name(k), v, step)
            if self.mlflow is not None and values:
                import time

                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                self.mlflow.log_batch(
                    self.mlflow_run, metrics=[Metric(k, v, now, step) for k, v in values.items()]
                )
        elif kind == "message" and self.tb is not None:
            self.tb.add_text("messages", str(payload.get("message", "")))

    def close(self, summary: dict[str, Any] | None = None, status: str = "FINISHED") -> None:
        if self.closed:
            return
        self.closed = True
        if self.tb is not None:
            if summary:
                for k, v in summary.items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        self.tb.add_scalar(f"summary/{k}", v, 0)
            self.tb.close()
        if self.mlflow is not None:
            if summary:
                for k, v in summary.items():
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        self.mlflow.log_metric(self.mlflow_run, f"final_{k}", float(v))
            self.mlflow.set_terminated(self.mlflow_run, status=status)


def _tb_name(key: str) -> str:
    """Group TensorBoard charts: train/loss, val/val_loss ..."""
    return ("val/" if key.startswith("val_") else "train/") + key


def track_events(cfg: Any, run_dir: Path, on_event: EventFn) -> tuple[EventFn, Tracker | None]:
    """The event callback the loop should use: `on_event`, plus the tracker when tracking is enabled."""
    tcfg = getattr(cfg, "tracking", None)
    if tcfg is None or not tcfg.backends:
        return on_event, None
    params = flatten(cfg.model_dump(mode="json"))
    tracker = Tracker(
        list(tcfg.backends),
        run_dir,
        params,
        experiment=tcfg.experiment,
        mlflow_uri=tcfg.mlflow_uri,
        run_name=tcfg.run_name,
    )

    def both(kind: str, payload: dict[str, Any]) -> None:
        on_event(kind, payload)
        tracker(kind, payload)

    return both, tracker
