"""Ray as the executor: a local Ray instance (127.0.0.1, 2 CPUs, started and stopped here) runs a service job
through `executor: ray` end to end, and a 4-trial sweep whose trials run as Ray tasks, two at a time."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from tests.conftest import capitals_records, tiny_config, write_jsonl
from tests.jobs.service_fixtures import add_file, free_port, service_settings
from tests.jobs.test_worker import _job

RAY = Path(sys.executable).with_name("ray")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """`ray start --head` on 127.0.0.1 with 2 CPUs; `ray stop` at the end. Yields its address."""
    if not RAY.exists() and shutil.which("ray") is None:
        pytest.skip("ray is not installed (pip install 'tuneforge[ray]')")
    ray_bin = str(RAY if RAY.exists() else shutil.which("ray"))
    port = free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    start = [ray_bin, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2"]
    start += ["--include-dashboard=false", "--disable-usage-stats"]
    r = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_a_service_job_trains_as_a_ray_task(ray_cluster, tmp_path, tiny_base):
    from tuneforge.jobs.store import Job, JobEvent
    from tuneforge.jobs.worker import Worker

    settings = service_settings(tmp_path / "data", tiny_base, executor="ray", ray_address=ray_cluster)
    worker = Worker(settings)
    train = write_jsonl(tmp_path / "capitals.jsonl", capitals_records(32))
    file_id = add_file(worker.sessions, train)
    job_id = _job(worker, file_id, n_epochs=1, batch_size=8, learning_rate_multiplier=1, max_steps=4)
    assert worker.run(idle_exit=True) == 1
    with worker.sessions() as s:
        job = s.get(Job, s.scalar(select(Job.pk).where(Job.id == job_id)))
        events = [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model and Path(job.run_dir, "adapter").is_dir()
    ran = [e for e in events if e.startswith("Training on Ray node")]
    assert ran and f"(process {os.getpid()})" not in ran[0]  # another process: a Ray worker
    assert any("training loss" in e for e in events)


def test_a_sweep_runs_its_trials_as_ray_tasks_two_at_a_time(ray_cluster, tmp_path, tiny_model_dir):
    from tuneforge.config import dump_config
    from tuneforge.experiments import sweep as S

    data = write_jsonl(tmp_path / "capitals.jsonl", capitals_records(48))
    base = tiny_config(
        tiny_model_dir, data, tmp_path / "unused", "train.epochs=2", "train.memory_check=false"
    )
    (tmp_path / "base.yaml").write_text(dump_config(base))
    spec = {
        "config": "base.yaml",
        "out": str(tmp_path / "sweep"),
        "sampler": "grid",
        "prune": False,
        "space": {"train.learning_rate": [1e-2, 3e-3, 1e-4, 1e-6]},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    sweep, base_cfg = S.load_sweep(tmp_path / "sweep.yaml")
    summary = S.run_sweep(sweep, base_cfg, show=False, ray=S.RayTrials(ray_cluster, parallel=2, cpus=1))
    trials = summary["trials"]
    assert sorted(t["train.learning_rate"] for t in trials) == sorted([1e-2, 3e-3, 1e-4, 1e-6])
    assert all(t["state"] == "complete" and t["value"] is not None for t in trials)
    pids = {t["ray"] for t in trials}
    assert all(not p.endswith(f":{os.getpid()}") and not p.endswith(":None") for p in pids)
    assert len(pids) >= 2  # two trials at a time: two Ray worker processes
    assert summary["best"]["params"]["train.learning_rate"] in (1e-2, 3e-3)
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "trials.csv")))
    assert len(rows) == 4 and (tmp_path / "sweep" / "best.yaml").is_file()


def test_kfold_trains_its_folds_as_ray_tasks_and_reports_what_a_local_run_does(
    ray_cluster, tmp_path, tiny_model_dir
):
    from tuneforge.experiments import kfold as K
    from tuneforge.experiments.common import RayTrials

    data = write_jsonl(tmp_path / "capitals.jsonl", capitals_records(30))
    cfg = tiny_config(
        tiny_model_dir,
        data,
        tmp_path / "run",
        "train.learning_rate=1e-2",
        "train.epochs=2",
        "train.num_threads=1",
        "train.memory_check=false",
    )
    on_ray = K.kfold(
        cfg, k=3, out=tmp_path / "ray", show=False, ray=RayTrials(ray_cluster, parallel=2, cpus=1)
    )
    local = K.kfold(cfg, k=3, out=tmp_path / "local", show=False)
    assert on_ray["fold_sizes"] == local["fold_sizes"]
    assert on_ray["metrics"].keys() == local["metrics"].keys()
    for name, m in on_ray["metrics"].items():  # the same folds trained alike, one thread each
        assert m["folds"] == pytest.approx(local["metrics"][name]["folds"], rel=1e-5, abs=1e-6), name
    assert len(on_ray["ray"]) == 3 and not any(p.endswith(f":{os.getpid()}") for p in on_ray["ray"])
    assert "ray" not in local
    assert (tmp_path / "ray" / "kfold.md").is_file() and (tmp_path / "ray" / "fold-3" / "run").is_dir()
