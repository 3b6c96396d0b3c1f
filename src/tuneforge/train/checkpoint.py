"""Atomic, resumable checkpoints.

A checkpoint is a folder `checkpoints/step-000120/` holding the trained parameters, the optimizer and scheduler
states, every RNG state and the loop's counters. It is written under a temporary name, `manifest.json` is
written last, and only then is the folder renamed into place — so a crash (even `kill -9`) mid-write leaves a
`.tmp-*` folder that resume ignores and removes, never a half checkpoint that looks complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tuneforge.errors import ConfigError

MANIFEST = "manifest.json"
SHARDED = "sharded"  # a sharded (fsdp) run's weights and optimizer state, one file per rank


@dataclass
class LoopState:
    """Everything besides tensors that the loop needs to continue exactly where it stopped."""

    step: int = 0  # optimizer steps done
    tokens_seen: int = 0  # real (non-padding) tokens processed
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    elapsed_s: float = 0.0  # training time before this process started
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def record_validation(
        self, val_loss: float, patience: int | None, admissible: bool = True
    ) -> tuple[bool, bool]:
        """Note a validation at the current step: (is it the best so far, should early stopping end the run).
        A validation that is not `admissible` (the forgetting guard's limit passed) cannot be the best."""
        improved = admissible and (self.best_val_loss is None or val_loss < self.best_val_loss)
        if improved:
            self.best_val_loss, self.best_step, self.evals_without_improvement = val_loss, self.step, 0
        else:
            self.evals_without_improvement += 1
        return improved, patience is not None and self.evals_without_improvement >= patience


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise RuntimeError(f"checkpoint holds parameters this model lacks: {missing[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def rng_state() -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(
    root: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: LoopState,
    fingerprint: str,
    keep: int,
    protect: int | None = None,
    staged: Path | None = None,
) -> Path:
    """`staged`: the temporary folder (from staging_dir) into which a sharded run's ranks have written their
    shards under sharded/; the rest is written next to them."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:06d}"
    tmp = staged or staging_dir(root, state.step)
    if staged is None:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=1))
    _fsync_dir(tmp)
    manifest = {
        "step": state.step,
        "fingerprint": fingerprint,
        "time": time.time(),
        "files": sorted(p.name for p in tmp.iterdir()),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _prune(root, keep, protect)
    return final


def staging_dir(root: Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of `step` (renamed into place once complete)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _fsync_dir(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def complete_checkpoints(root: Path, fingerprint: str | None = None) -> list[Path]:
    """Checkpoints with a manifest (and the given config fingerprint), oldest first."""
    out = []
    for d in sorted(root.glob("step-*")) if root.exists() else []:
        m = d / MANIFEST
        if not m.is_file():
            continue
        try:
            info = json.loads(m.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if fingerprint is None or info.get("fingerprint") == fingerprint:
            out.append(d)
    return out


def clean_partial(root: Path) -> int:
    """Remove folders left by a crash mid-write; returns how many."""
    n = 0
    for d in root.glob(".tmp-step-*") if root.exists() else []:
        shutil.rmtree(d, ignore_errors=True)
        n += 1
    for d in root.glob("step-*") if root.exists() else []:
        if not (d / MANIFEST).is_file():
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


def _prune(root: Path, keep: int, protect: int | None) -> None:
    ckpts = complete_checkpoints(root)
    for d in ckpts[:-keep]:
        if protect is not None and d.name == f"step-{protect:06d}":
            continue
        shutil.rmtree(d, ignore_errors=True)


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    into: Callable[[Path], None] | None = None,
) -> LoopState:
    """Put a checkpoint back; `into(folder)` reads a sharded run's (fsdp) weights and optimizer state."""
    sharded = (path / SHARDED).is_dir()
    if sharded != (into is not None):
        raise ConfigError(
            f"{path} was written by a {'sharded (fsdp)' if sharded else 'ddp or single-process'} run and this "
            f"one is {'sharded' if into is not None else 'not'}",
            "resume with the strategy that wrote it (train.distributed.strategy), or start over with --overwrite",
        )
    if into is not None:
        into(path / SHARDED)
    else:
        load_trainable_state(model, load_file(str(path / "trainable.safetensors")))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return LoopState(**json.loads((path / "state.json").read_text()))
