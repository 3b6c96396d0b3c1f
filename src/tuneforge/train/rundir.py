"""The run folder: what a run writes, and the guard against mixing two runs in one folder.

run_dir/
  config.yaml          the resolved config (every default filled in)
  data/                the prepared train/validation/test splits, rejects.jsonl, data_report.json
  checkpoints/         resumable checkpoints (step-000040/ ...)
  adapter/ | model/    the trained artifact (PEFT adapter, or full weights) + tokenizer
  metrics.jsonl        one line per logged step and per validation
  loss_curve.png       train and validation loss
  report.json/.html    the before/after comparison
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuneforge.config import RunConfig, build_config, dump_config
from tuneforge.errors import RunDirError


@dataclass
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def done(self) -> Path:
        return self.root / "train_done.json"

    def artifact(self, name: str) -> Path:
        return self.root / name

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
                diff = _diff(old.model_dump(mode="json"), cfg.model_dump(mode="json"))
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
            self.config.write_text(dump_config(cfg))  # eval settings may differ; training ones cannot
            return True
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(dump_config(cfg))
        return False

    def _read_existing(self) -> RunConfig:
        try:
            data = yaml.safe_load(self.config.read_text())
            return build_config(data, str(self.config))
        except Exception as e:
            raise RunDirError(
                f"{self.config} is unreadable ({e})", "pass --overwrite to replace the run"
            ) from None

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
