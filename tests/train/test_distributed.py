"""Data-parallel training (`tuneforge train CONFIG --nproc N`, torchrun, gloo on CPU): N ranks make the same
updates as one process on the same global batch — the same loss at every step and the same validation loss —
only rank 0 writes the run folder, and a run whose rank was killed resumes from rank 0's checkpoint and ends where
an uninterrupted run ends.

Tolerance: the ranks sum the same gradients in another order (float32 reassociation); measured over 16 steps of
the tiny LoRA run, the largest relative difference of any loss was 1e-7. AdamW divides each gradient by its own
running size, so a component at noise level can move its weight by a whole step: 1e-5 leaves room for that, and
a real mismatch (the schedule stepped twice per step, a rank's share counted twice) shows at 1e-3 and more."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, capitals_records, tiny_config, write_jsonl


def write_config(tiny_model_dir: Path, tmp_path: Path, run: str, *overrides: str) -> Path:
    data = tmp_path / "capitals.jsonl"
    if not data.exists():
        write_jsonl(data, capitals_records(64))
    cfg = tiny_config(tiny_model_dir, data, tmp_path / run, "method.name=lora", "train.epochs=2", *overrides)
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"resolved"})))
    return path


def tuneforge(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kw,
    )


def finished(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def metrics(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["loss"] for r in rows if "loss" in r}
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    return train, val


@pytest.fixture(scope="module")
def single(tiny_model_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("dp")
    finished(tuneforge("train", str(write_config(tiny_model_dir, tmp, "one")), "--no-eval"))
    return tmp / "one"


def test_two_ranks_train_as_one_process_on_the_same_global_batch(single, tiny_model_dir, tmp_path):
    scratch_before = set(Path("/tmp").glob("tuneforge-rank1-*"))  # (a killed rank's, from elsewhere, stays)
    out = finished(
        tuneforge("train", str(write_config(tiny_model_dir, tmp_path, "two")), "--nproc", "2", "--no-eval")
    )
    assert "Data parallel over 2 ranks (gloo, ddp)" in out
    one_train, one_val = metrics(single)
    two_train, two_val = metrics(tmp_path / "two")
    assert one_train.keys() == two_train.keys() and len(one_train) >= 10
    for step, loss in one_train.items():
        assert two_train[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    assert one_val.keys() == two_val.keys() and one_val
    for step, loss in one_val.items():
        assert two_val[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step

    # one run folder, written once: the same files as the single process's, and no rank's scratch left behind
    def names(run: Path) -> list[str]:
        return sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if "checkpoints" not in p.parts)

    assert names(tmp_path / "two") == names(single)
    assert set(Path("/tmp").glob("tuneforge-rank1-*")) <= scratch_before


def test_a_killed_rank_resumes_from_rank_0s_checkpoint_and_ends_as_uninterrupted(
    single, tiny_model_dir, tmp_path
):
    cfg = str(write_config(tiny_model_dir, tmp_path, "killed", "train.save_every=3"))
    proc = tuneforge("train", cfg, "--nproc", "2", "--no-eval")
    kill_one_rank_after_a_checkpoint(proc, tmp_path / "killed")
    out = finished(tuneforge("train", cfg, "--nproc", "2", "--resume", "--no-eval"))
    assert "Resumed from step-" in out
    one_train, one_val = metrics(single)
    two_train, two_val = metrics(tmp_path / "killed")
    last = max(one_train)
    assert max(two_train) == last and two_train[last] == pytest.approx(one_train[last], rel=1e-5, abs=1e-6)
    assert two_val[max(one_val)] == pytest.approx(one_val[max(one_val)], rel=1e-5, abs=1e-6)


def kill_one_rank_after_a_checkpoint(proc: subprocess.Popen, run: Path) -> None:
    ckpts = run / "checkpoints"
    deadline = time.time() + 240
    while not any(ckpts.glob("step-*/manifest.json")) if ckpts.exists() else True:
        assert time.time() < deadline and proc.poll() is None, "no checkpoint was written"
        time.sleep(0.2)
    ranks = subprocess.run(
        ["pgrep", "-f", "-g", str(proc.pid), "tuneforge.cli train"], capture_output=True, text=True
    )
    pids = [int(p) for p in ranks.stdout.split() if int(p) != proc.pid]
    assert pids, ranks
    os.kill(max(pids), signal.SIGKILL)  # one rank dies: the whole group fails
    proc.wait(120)
    assert proc.returncode != 0


def test_fsdp_shards_the_same_updates_and_resumes_after_a_killed_rank(single, tiny_model_dir, tmp_path):
    """LoRA over a sharded frozen base (FSDP2 on gloo): every step's loss is the single process's, through a
    kill -9 of one rank and a resume from the gathered checkpoint; then rank 0 evaluates the whole model alone."""
    run = tmp_path / "fsdp"
    cfg = str(write_config(tiny_model_dir, tmp_path, "fsdp", "train.save_every=3"))
    proc = tuneforge("train", cfg, "--nproc", "2", "--set", "train.distributed.strategy=fsdp", "--no-eval")
    kill_one_rank_after_a_checkpoint(proc, run)
    assert (next(run.glob("checkpoints/step-*")) / "sharded").is_dir()  # each rank wrote its shards
    out = finished(
        tuneforge("train", cfg, "--nproc", "2", "--set", "train.distributed.strategy=fsdp", "--resume")
    )
    assert "Data parallel over 2 ranks (gloo, fsdp)" in out and "Resumed from step-" in out
    one_train, one_val = metrics(single)
    fsdp_train, fsdp_val = metrics(run)
    assert fsdp_train.keys() == one_train.keys() and fsdp_val.keys() == one_val.keys()
    for step, loss in one_train.items():
        assert fsdp_train[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    for step, loss in one_val.items():
        assert fsdp_val[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    report = json.loads((run / "report.json").read_text())
    assert any(v["key"] == "tuned" for v in report["variants"])


def test_estimate_per_rank_says_what_each_rank_holds_and_exchanges(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    cfg = str(write_config(tiny_model_dir, tmp_path, "est"))
    one = CliRunner().invoke(app, ["estimate", cfg, "--no-time", "--json"])
    two = CliRunner().invoke(app, ["estimate", cfg, "--no-time", "--json", "--nproc", "2"])
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    one_d = json.loads(one.output[one.output.index("{") :])
    two_d = json.loads(two.output[two.output.index("{") :])
    assert "ranks" not in one_d and two_d["ranks"] == 2
    # a whole model per rank: the same weights and optimizer state as one process
    assert two_d["parts"]["gradients + optimizer state"] == one_d["parts"]["gradients + optimizer state"]
    assert (
        two_d["parts"]["activations (largest micro-batch)"]
        <= one_d["parts"]["activations (largest micro-batch)"]
    )
    trainable = one_d["parts"]["gradients + optimizer state"] // 12  # fp32 gradient + AdamW's two moments
    assert two_d["strategy"] == "ddp" and two_d["bytes_exchanged_per_step"] == 8 * trainable // 2
    # fsdp: a rank keeps half the gradients and optimizer state and holds less of the model than a ddp rank
    res = CliRunner().invoke(
        app,
        ["estimate", cfg, "--no-time", "--json", "--nproc", "2", "--set", "train.distributed.strategy=fsdp"],
    )
    assert res.exit_code == 0, res.output
    fsdp = json.loads(res.output[res.output.index("{") :])
    assert fsdp["strategy"] == "fsdp" and fsdp["strategies"]["fsdp"]["peak_bytes"] == fsdp["peak_bytes"]
    grads = two_d["parts"]["gradients + optimizer state"]
    assert fsdp["parts"]["gradients + optimizer state"] == grads // 2
    assert fsdp["parts"]["in use now"] < two_d["parts"]["in use now"]
    assert fsdp["peak_bytes"] < fsdp["strategies"]["ddp"]["peak_bytes"]
    assert two_d["strategies"]["ddp"]["peak_bytes"] == two_d["peak_bytes"]
    assert fsdp["bytes_exchanged_per_step"] > two_d["bytes_exchanged_per_step"]  # it gathers weights too
