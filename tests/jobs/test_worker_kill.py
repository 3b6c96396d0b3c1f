"""A real worker process is killed with SIGKILL in the middle of a job; another worker process takes the job over
when the lease runs out, resumes it from the last checkpoint, and the job succeeds with every step logged once."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.jobs.service_fixtures import add_file, kill_group, service_settings, start_worker, wait_for
from tests.jobs.test_worker import _get, _job, _messages, _train_steps
from tuneforge.jobs import store
from tuneforge.jobs.store import FineTunedModel, JobCheckpoint
from tuneforge.jobs.worker import Worker

pytestmark = pytest.mark.timeout(400)


def test_a_killed_worker_is_replaced_and_the_job_resumes_from_its_checkpoint(
    tmp_path, tiny_base, db_url, capitals_jsonl
):
    settings = service_settings(tmp_path / "data", tiny_base, db_url, lease_s=2.0, heartbeat_s=0.25)
    db = Worker(settings)  # used here only to reach the database
    job_id = _job(
        db,
        add_file(db.sessions, capitals_jsonl),
        max_steps=150,
        batch_size=4,
        save_every=5,
        lora_rank=4,
        validation_split=0,
    )  # no validation: early stopping would end the job before step 150

    def checkpoint_steps() -> list[int]:
        with db.sessions() as s:
            return list(s.scalars(select(JobCheckpoint.step_number).where(JobCheckpoint.job_id == job_id)))

    first = start_worker(settings, tmp_path / "worker1.log")
    try:
        wait_for(lambda: max(checkpoint_steps(), default=0) >= 10, 120, "the first checkpoints", every=0.02)
    finally:
        kill_group(first)  # SIGKILL: no checkpoint, no goodbye
    killed = _get(db, job_id)
    assert killed.status == "running" and killed.lease_owner is not None, (
        tmp_path / "worker1.log"
    ).read_text()
    assert killed.step < 150

    second = start_worker(settings, tmp_path / "worker2.log")
    try:
        done = wait_for(
            lambda: (j := _get(db, job_id)).status in ("succeeded", "failed") and j, 180, "the job"
        )
    finally:
        second.terminate()
        second.wait(30)
    log = (tmp_path / "worker2.log").read_text()
    assert done.status == "succeeded", (done.error, log[-2000:])
    assert done.attempts == 2 and len(done.failures) == 1
    assert killed.lease_owner in done.failures[0] and "stopped renewing its lease" in done.failures[0]
    msgs = _messages(db, job_id)
    resumed = [m for m in msgs if m.startswith("Resumed from step-")]
    assert resumed and int(resumed[0].split("step-")[1].split()[0]) >= 10
    assert _train_steps(db, job_id) == list(range(1, 151))  # replayed steps are not logged twice
    with db.sessions() as s:
        assert s.scalar(select(FineTunedModel).where(FineTunedModel.job_id == job_id)) is not None
    assert second.returncode == 0  # SIGTERM on an idle worker: a clean exit
    assert store.lease_job(db.sessions, "probe", 1) is None
