"""`tuneforge serve` (API server + its worker process) is killed with SIGKILL in the middle of a job and started
again: no file, job or event is lost, and the job resumes from its last checkpoint and succeeds."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.jobs.service_fixtures import (
    ALICE,
    KEYS,
    client,
    free_port,
    kill_group,
    service_settings,
    subprocess_env,
    wait_for,
)

pytestmark = pytest.mark.timeout(400)


class Served:
    """A `tuneforge serve` process on 127.0.0.1 (url/root like LiveServer's)."""

    def __init__(self, settings, log, db_url: str):
        self.port = free_port()
        env = subprocess_env(settings)
        env["TUNEFORGE_API_KEYS"] = json.dumps(KEYS)
        env.pop("TUNEFORGE_DATABASE_URL", None)
        env["DATABASE_URL"] = db_url  # the plain variable deployments use
        cmd = [
            sys.executable,
            "-m",
            "tuneforge.cli",
            "serve",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--log-level",
            "warning",
        ]
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.root = f"http://127.0.0.1:{self.port}"
        wait_for(self._ready, 90, f"tuneforge serve on port {self.port} ({log})", every=0.25)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "tuneforge serve exited"
        try:
            return httpx.get(f"{self.root}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite: the flow, error and kill tests
def test_a_server_restart_mid_job_loses_no_file_job_or_event(tmp_path, tiny_base, capitals_jsonl, db_url):
    settings = service_settings(tmp_path / "data", tiny_base, None, lease_s=2.0, heartbeat_s=0.25)
    first = Served(settings, tmp_path / "serve1.log", db_url)
    try:
        c = client(first)
        train = c.files.create(file=capitals_jsonl, purpose="fine-tune")
        job = c.fine_tuning.jobs.create(
            model="tiny",
            training_file=train.id,
            suffix="restart",
            method={
                "type": "supervised",
                "supervised": {
                    "hyperparameters": {
                        "batch_size": 4,
                        "max_steps": 150,
                        "save_every": 5,
                        "lora_rank": 4,
                        "validation_split": 0,  # every step runs: no early stopping
                    }
                },
            },
        )
        wait_for(
            lambda: len(list(c.fine_tuning.jobs.checkpoints.list(job.id))) >= 2,
            120,
            "checkpoints",
            every=0.05,
        )
        before = {e.id: e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=1000)}
    finally:
        kill_group(first.proc)  # the server and its worker, at once

    second = Served(settings, tmp_path / "serve2.log", db_url)
    try:
        c = client(second)
        assert [f.id for f in c.files.list(purpose="fine-tune")] == [train.id]
        assert c.files.content(train.id).content == capitals_jsonl.read_bytes()
        done = wait_for(
            lambda: (j := c.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
            180,
            "the job to finish after the restart",
        )
        log = (tmp_path / "serve2.log").read_text()[-3000:]
        assert done.status == "succeeded", (done.error, log)
        after = {e.id: e for e in c.fine_tuning.jobs.list_events(job.id, limit=1000)}
        assert set(before) <= set(after)  # every event written before the crash is still there
        assert any(e.message.startswith("Resumed from step-") for e in after.values())
        steps = sorted(
            e.data["step"]
            for e in after.values()
            if e.type == "metrics" and "train_loss" in e.data and "valid_loss" not in e.data
        )
        assert steps == list(range(1, 151))
        assert len(done.failures) == 1 and "stopped renewing its lease" in done.failures[0]
        reply = c.chat.completions.create(
            model=done.fine_tuned_model,
            max_tokens=4,
            messages=[{"role": "user", "content": "Capital of Peru?"}],
        )
        assert reply.usage.completion_tokens >= 1
        ready = httpx.get(f"{second.root}/health/ready", headers={"Authorization": f"Bearer {ALICE}"})
        assert ready.json()["workers"] >= 1
    finally:
        second.proc.terminate()
        second.proc.wait(60)
    assert second.proc.returncode == 0
