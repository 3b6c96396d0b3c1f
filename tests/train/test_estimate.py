"""The memory/time estimator against measurements, and the refusal to start a run that cannot fit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, tiny_config
from tuneforge.config import dump_config
from tuneforge.errors import MemoryBudgetError
from tuneforge.models import memory
from tuneforge.recipes.lm import FineTune

ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def _peak_rss_of(*args: str) -> tuple[subprocess.CompletedProcess, int]:
    """Run the CLI and return its result and the child's own peak RSS (os.wait4 gives that child's rusage)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read()
    return subprocess.CompletedProcess(
        proc.args, os.waitstatus_to_exitcode(status), "", err
    ), usage.ru_maxrss * 1024


def _estimate_and_train(path, run_dir) -> tuple[dict, int, float]:
    """Predict in one process, train in another: prediction, measured peak RSS, measured training seconds."""
    est = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "estimate", str(path), "--json"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert est.returncode == 0, est.stderr[-2000:]
    shutil.rmtree(run_dir, ignore_errors=True)
    run, peak = _peak_rss_of("train", str(path), "--no-eval")
    assert run.returncode == 0, run.stderr[-2000:]
    return (
        json.loads(est.stdout),
        peak,
        json.loads((run_dir / "train_done.json").read_text())["train_seconds"],
    )


def test_estimate_matches_a_real_run_within_25_percent(tiny_model_dir, capitals_file, tmp_path):
    cfg = tiny_config(
        tiny_model_dir,
        capitals_file,
        tmp_path / "run",
        "method.name=lora",
        "train.epochs=60",  # long enough (~8 s) that a cold first step is not a quarter of the run
        "train.batch_size=16",
        "train.eval_every=20",
    )
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    # On a shared 2-core VM one process can run 15-30% slower than the next for its whole life (measured: the
    # same estimate 7.7-9.8 s, the same training 7.6-8.9 s), so a time miss is retried with fresh processes up
    # to twice; an estimator off by more than 25% misses every time. Memory is checked on every trial.
    misses = []
    for _ in range(3):
        predicted, peak, measured_s = _estimate_and_train(path, tmp_path / "run")
        assert predicted["peak_bytes"] == pytest.approx(peak, rel=0.25)
        if predicted["seconds_total"] == pytest.approx(measured_s, rel=0.25):
            return
        misses.append((round(predicted["seconds_total"], 2), measured_s))
    pytest.fail(f"time predicted vs measured missed by more than 25% three times: {misses}")


def test_refuses_to_start_when_it_cannot_fit(tiny_model_dir, capitals_file, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "memory_available", lambda device: 1024)
    cfg = tiny_config(tiny_model_dir, capitals_file, tmp_path / "run", "method.name=full")
    with pytest.raises(MemoryBudgetError) as e:
        FineTune(cfg).setup()
    msg = str(e.value)
    assert "needs about" in msg and "train.batch_size=" in msg and "gradient_checkpointing" in msg
    assert "train.memory_check=false" in msg
    monkeypatch.undo()


def test_memory_check_can_be_switched_off(tiny_model_dir, capitals_file, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "memory_available", lambda device: 1024)
    cfg = tiny_config(
        tiny_model_dir, capitals_file, tmp_path / "run", "train.memory_check=false", "train.max_steps=1"
    )
    ft = FineTune(cfg)
    ft.setup()
    assert ft.loop.train().steps == 1


def test_a_preference_pair_counts_as_two_rows(tiny_model_dir, tmp_path):
    """DPO runs chosen and rejected through the model together: its largest micro-batch has about twice the
    tokens of SFT on the chosen answers of the same pairs."""
    from tests.conftest import write_jsonl
    from tests.train.test_preference import preference_rows

    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(32))
    common = ("method.name=lora", "train.batch_size=4", "train.max_steps=2", "data.split.test=0.0")
    tokens = {}
    for name in ("sft", "dpo"):
        cfg = tiny_config(tiny_model_dir, pairs, tmp_path / name, *common, f"objective={name}")
        ft = FineTune(cfg, overwrite=True)
        ft.setup()
        tokens[name] = ft.estimate().largest_micro_batch_tokens
        ft.loop.cleanup()
    assert tokens["dpo"] >= 1.8 * tokens["sft"]
