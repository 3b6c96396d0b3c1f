"""The run folder: every path in it, and the guard against mixing two runs in one folder.

run_dir/
  config.yaml          the resolved config (every default filled in)
  data/                the prepared train/validation/test splits, rejects.jsonl, data_report.json
  checkpoints/         resumable checkpoints (step-000040/ ...) and best-trainable.safetensors
  best/                the best validated weights so far, as an artifact
  adapter/ | model/    the trained artifact (PEFT adapter, or full weights) + tokenizer
  train_done.json      the finished run's counters (steps, best step, tokens, time)
  metrics.jsonl        one line per logged step and per validation
  loss_curve.png       train and validation loss
  report.json/.html    the before/after comparison
  tensorboard/         event files when tracking.backends has tensorboard
  stage-K-NAME/        a staged run's stages, each a run folder of its own, + merged/ (its result as a model
                       folder, where the next stage starts); stages.json lists them

A leaf like config.py: every floor that reads or writes run folders (models' resolver, the training loop, the
recipes, jobs, the service) takes the layout from here.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuneforge.config import RunConfig, dump_config
from tuneforge.errors import RunDirError

ARTIFACTS = ("adapter", "model")  # a PEFT adapter, or full weights (methods/registry.py: MethodSpec.artifact)
SPLITS = ("train", "validation", "test")


@dataclass
class RunDir:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def split(self, name: str) -> Path:
        return self.data / f"{name}.jsonl"

    @property
    def splits_marker(self) -> Path:
        return self.data / "splits.json"

    @property
    def rejects(self) -> Path:
        return self.data / "rejects.jsonl"

    @property
    def data_report(self) -> Path:
        return self.data / "data_report.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def best_state(self) -> Path:
        return self.checkpoints / "best-trainable.safetensors"

    @property
    def done(self) -> Path:
        return self.root / "train_done.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def loss_curve(self) -> Path:
        return self.root / "loss_curve.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def artifact(self, name: str) -> Path:
        return self.root / name

    def trained_artifact(self) -> Path | None:
        """The artifact folder a finished or running run has written, if any."""
        return next((self.root / a for a in ARTIFACTS if (self.root / a).is_dir()), None)

    def is_run(self) -> bool:
        """A tuneforge run folder with a trained artifact (what `model.name` may point at)."""
        return self.config.is_file() and self.trained_artifact() is not None

    # ---------------------------------------------------------------------------------------------- stages
    def stage(self, k: int, name: str) -> RunDir:
        """Stage k (from 0) of a staged run: a run folder of its own inside this one."""
        return RunDir(self.root / f"stage-{k + 1}-{name}")

    @property
    def merged(self) -> Path:
        """A stage's adapter folded into its base: the model folder the next stage starts from."""
        return self.root / "merged"

    def next_stage_start(self, artifact: str) -> Path:
        """What the stage after this one loads as its base: full weights as they are, adapters merged."""
        return self.merged if artifact == "adapter" else self.artifact(artifact)

    @property
    def stages(self) -> Path:
        return self.root / "stages.json"

    def stage_runs(self) -> list[RunDir]:
        """The stage folders a staged run has written, in order."""
        return [RunDir(p) for p in sorted(self.root.glob("stage-*")) if p.is_dir()]

    # ------------------------------------------------------------------------------------------- claiming
    def claim(self, cfg: RunConfig, resume: bool, overwrite: bool) -> bool:
        """Make the folder ours. Returns True if there is earlier progress of this same run to resume."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise RunDirError(f"run folder {root} is a file", "choose another run_dir")
        has_config = self.config.is_file()
        if overwrite and root.exists():
            shutil.rmtree(root)
            has_config = False
        elif root.exists() and any(root.iterdir()) and not has_config:
            raise RunDirError(
                f"run folder {root} is not empty and holds no tuneforge run",
                "choose another run_dir, or pass --overwrite to replace its content",
            )
        if has_config:
            old = self._read_existing()
            if old.fingerprint() != cfg.fingerprint():
                diff = _diff(
                    old.model_dump(mode="json", exclude={"resolved"}),
                    cfg.model_dump(mode="json", exclude={"resolved"}),
                )
                raise RunDirError(
                    f"run folder {root} already holds a different run (differs in: {', '.join(diff[:4])})",
                    "choose another run_dir, or pass --overwrite to replace it",
                )
            if not resume:
                raise RunDirError(
                    f"run folder {root} already holds this run",
                    "pass --resume to continue it, or --overwrite to start again",
                )
            root.mkdir(parents=True, exist_ok=True)
            # eval settings may differ; training ones cannot, and what `auto` resolved to is kept for the resume
            self.config.write_text(dump_config(cfg.model_copy(update={"resolved": old.resolved})))
            return True
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(dump_config(cfg))
        return False

    def read_resolved(self) -> dict:
        """What this run's `auto` settings resolved to ({} before set-up resolved them)."""
        return self._read_existing().resolved if self.config.is_file() else {}

    def _read_existing(self) -> RunConfig:
        # The schema alone suffices to compare: config.yaml holds every option of its method as written by
        # dump_config, so the fingerprints of the same run agree without the method's own class.
        try:
            return RunConfig.model_validate(yaml.safe_load(self.config.read_text()))
        except Exception as e:
            raise RunDirError(
                f"{self.config} is unreadable ({e})", "pass --overwrite to replace the run"
            ) from None

    # -------------------------------------------------------------------------------------------- metrics
    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        rows = []
        for line in self.metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash ends the log
        return rows

    def truncate_metrics(self, step: int) -> None:
        """Drop metric lines past `step` (a resumed run rewrites them)."""
        rows = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        self.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def read_done(self) -> dict:
        """train_done.json of a finished run, {} before it finished."""
        return json.loads(self.done.read_text()) if self.done.is_file() else {}


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if k in ("run_dir", "eval"):
            continue
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out
