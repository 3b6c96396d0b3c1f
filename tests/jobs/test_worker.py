"""The worker on SQLite and on PostgreSQL, in this process: file validation with OpenAI's codes, pause → resume
→ the same end as an uninterrupted run, cancel, and a job that keeps crashing stops after max_attempts."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import select

from tests.conftest import capitals_records, write_jsonl
from tests.jobs.service_fixtures import add_file, service_settings, wait_for
from tuneforge.jobs import store
from tuneforge.jobs.store import FineTunedModel, Job, JobEvent
from tuneforge.jobs.worker import Worker

pytestmark = pytest.mark.timeout(300)


def _job(worker: Worker, train: str, validation: str | None = None, seed: int = 0, **hp) -> str:
    """A job as the API would store it: OpenAI's hyperparameters ("auto" unless given), the rest as extras."""
    job_id = store.new_id("ftjob")
    openai_keys = ("n_epochs", "batch_size", "learning_rate_multiplier")
    with store.transaction(worker.sessions) as s:
        s.add(
            Job(
                id=job_id,
                owner="alice",
                model="tiny",
                training_file=train,
                validation_file=validation,
                seed=seed,
                training_type="lora",
                hyperparameters={k: hp.get(k, "auto") for k in openai_keys},
                extras={k: v for k, v in hp.items() if k not in openai_keys},
                status="validating_files",
                created_at=int(store.now()),
                failures=[],
                result_files=[],
            )
        )
    return job_id


def _get(worker: Worker, job_id: str) -> Job:
    with worker.sessions() as s:
        return s.scalar(select(Job).where(Job.id == job_id))


def _messages(worker: Worker, job_id: str) -> list[str]:
    with worker.sessions() as s:
        return list(
            s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.pk))
        )


def _train_steps(worker: Worker, job_id: str) -> list[int]:
    with worker.sessions() as s:
        rows = s.execute(
            select(JobEvent.step, JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        ).all()
    return sorted(step for step, data in rows if "train_loss" in data and "valid_loss" not in data)


def test_files_are_validated_with_openai_codes_and_line_numbers(tmp_path, tiny_base, db_url):
    worker = Worker(service_settings(tmp_path / "data", tiny_base, db_url))
    few = add_file(worker.sessions, write_jsonl(tmp_path / "few.jsonl", capitals_records(5)))
    rows = capitals_records(20)
    rows[2]["messages"][0]["role"] = "bot"
    rows[6]["messages"] = [{"role": "user", "content": "no answer here"}]
    bad = add_file(worker.sessions, write_jsonl(tmp_path / "bad.jsonl", rows))
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(json.dumps(r) + "\n" for r in capitals_records(12)) + "{not json\n")
    broken_id = add_file(worker.sessions, broken)

    jobs = {name: _job(worker, fid) for name, fid in (("few", few), ("bad", bad), ("broken", broken_id))}
    assert worker.run(idle_exit=True) == 3
    few_job, bad_job, broken_job = (_get(worker, jobs[k]) for k in ("few", "bad", "broken"))
    assert few_job.status == "failed" and few_job.error["code"] == "invalid_n_examples"
    assert few_job.error["param"] == "training_file" and "5 examples; at least 10" in few_job.error["message"]
    assert bad_job.status == "failed" and bad_job.error["code"] == "invalid_file_format"
    msg = bad_job.error["message"]
    assert f"training file {bad} (bad.jsonl) has 2 invalid records" in msg
    assert "line 3, messages[0].role" in msg and "invalid_role" in msg
    assert "line 7" in msg and "no_assistant_message" in msg
    assert str(tmp_path) not in msg  # the server's paths are not shown
    assert broken_job.status == "failed" and "line 13" in broken_job.error["message"]
    assert any(m.startswith("Job failed:") for m in _messages(worker, jobs["few"]))
    assert bad_job.finished_at and bad_job.lease_owner is None


def test_pause_then_resume_ends_like_an_uninterrupted_job_and_cancel_stops(
    tmp_path, tiny_base, db_url, capitals_jsonl
):
    settings = service_settings(tmp_path / "data", tiny_base, db_url)
    worker = Worker(settings)
    train = add_file(worker.sessions, capitals_jsonl)
    hp = dict(max_steps=40, batch_size=4, save_every=5, lora_rank=4)
    straight = _job(worker, train, **hp)
    assert worker.run(max_jobs=1) == 1
    reference = _get(worker, straight)
    assert reference.status == "succeeded"

    paused = _job(worker, train, **hp)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: _get(worker, paused).step >= 3, 60, "training to start")
        with store.transaction(worker.sessions) as s:
            s.scalar(select(Job).where(Job.id == paused)).control = "pause"
        job = wait_for(lambda: (j := _get(worker, paused)).status == "paused" and j, 30, "the pause")
        assert job.lease_owner is None and 3 <= job.step < 40 and job.control is None
        with store.transaction(worker.sessions) as s:
            s.scalar(select(Job).where(Job.id == paused)).status = "queued"  # what POST /resume does
        done = wait_for(
            lambda: (j := _get(worker, paused)).status == "succeeded" and j, 60, "the resumed job"
        )

        cancelled = _job(worker, train, **hp)
        wait_for(lambda: _get(worker, cancelled).step >= 2, 60, "the second job to start")
        with store.transaction(worker.sessions) as s:
            s.scalar(select(Job).where(Job.id == cancelled)).control = "cancel"
        gone = wait_for(lambda: (j := _get(worker, cancelled)).status == "cancelled" and j, 30, "the cancel")
    finally:
        worker.stop()
        t.join(30)
    assert gone.finished_at and gone.fine_tuned_model is None and gone.step < 40
    assert _train_steps(worker, paused) == list(range(1, 41))  # every step once, none lost or doubled
    assert done.trained_tokens == reference.trained_tokens
    msgs = _messages(worker, paused)
    assert any(m.startswith("Job paused at step") for m in msgs) and "Fine-tuning job resumed" in " ".join(
        msgs
    )
    # the same adapter as the job that was never paused
    from safetensors.torch import load_file

    a = load_file(f"{reference.run_dir}/adapter/adapter_model.safetensors")
    b = load_file(f"{done.run_dir}/adapter/adapter_model.safetensors")
    assert all((a[k] - b[k]).abs().max() < 1e-5 for k in a)
    with worker.sessions() as s:
        assert s.scalar(select(FineTunedModel).where(FineTunedModel.job_id == paused)) is not None


def test_a_job_that_keeps_crashing_fails_after_max_attempts_with_every_reason(
    tmp_path, tiny_base, db_url, capitals_jsonl, monkeypatch
):
    from tuneforge.recipes import run

    calls = []

    def crash(cfg, **kw):  # e.g. out of memory: not the user's fault, worth another attempt
        calls.append(kw["resume"])
        raise RuntimeError(f"simulated crash {len(calls)}")

    monkeypatch.setattr(run, "finetune", crash)
    worker = Worker(service_settings(tmp_path / "data", tiny_base, db_url, max_attempts=3))
    job_id = _job(worker, add_file(worker.sessions, capitals_jsonl))
    assert worker.run(idle_exit=True) == 3
    job = _get(worker, job_id)
    assert job.status == "failed" and job.error["code"] == "training_failed"
    assert job.attempts == 3 and len(calls) == 3
    assert [f.split(": ", 1)[1] for f in job.failures] == [
        f"RuntimeError: simulated crash {i}" for i in (1, 2, 3)
    ]
    assert "failed 3 times" in job.error["message"]
    msgs = _messages(worker, job_id)
    assert sum("goes back to the queue" in m for m in msgs) == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_fine_tuned_model_ids_follow_openai(db_url):
    from tuneforge.jobs.openai import fine_tuned_model_id

    assert fine_tuned_model_id("tiny", "alice", "caps", "ftjob-abc") == "ft:tiny:alice:caps:abc"
    assert fine_tuned_model_id("smollm2-135m", "bob", None, "ftjob-x1") == "ft:smollm2-135m:bob::x1"
