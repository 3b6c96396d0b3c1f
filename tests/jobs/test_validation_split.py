"""A job without a validation file validates on a seeded, stratified split of its training file (validation_split
"auto"), reports the held-out records in its events and result files, and reports the epochs and learning rate
the library chose for "auto" as numbers. On the tiny model, in this process, on SQLite."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.jobs.service_fixtures import add_file, service_settings
from tests.jobs.test_worker import _get, _job, _messages
from tuneforge.data.prepare import read_split
from tuneforge.jobs import openai, store
from tuneforge.jobs.lifecycle import JobRun, _EventSink
from tuneforge.jobs.store import File, Job, JobEvent, Lease
from tuneforge.jobs.worker import Worker
from tuneforge.rundir import RunDir

pytestmark = [pytest.mark.timeout(300), pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]

FAST = dict(max_steps=4, eval_every=2, batch_size=4, lora_rank=4)


def _events(worker: Worker, job_id: str) -> list[JobEvent]:
    with worker.sessions() as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.pk)))


def _held_out_ids(job: Job) -> list[int]:
    return [ex.source.index for ex in read_split(RunDir(job.run_dir).split("validation"))]


def test_a_job_without_validation_file_validates_on_held_out_records(
    tmp_path, tiny_base, db_url, capitals_jsonl
):
    worker = Worker(service_settings(tmp_path / "data", tiny_base, db_url))
    job_id = _job(worker, add_file(worker.sessions, capitals_jsonl), **FAST)
    assert worker.run(max_jobs=1) == 1
    job = _get(worker, job_id)
    assert job.status == "succeeded", job.error

    events = _events(worker, job_id)
    assert [e.data["step"] for e in events if e.type == "metrics" and "valid_loss" in e.data] == [2, 4]
    (held_event,) = [e for e in events if e.message.startswith("Held out")]
    assert held_event.message.startswith(
        "Held out 6 of 64 training examples for validation (9%, seeded, stratified by answer); "
        "see the job's result file validation_split.jsonl"
    )

    # the held-out records are not trained on: data/train.jsonl and the validation split are disjoint
    run = RunDir(job.run_dir)
    trained = {ex.source.index for ex in read_split(run.split("train"))}
    held = _held_out_ids(job)
    assert len(held) == 6 and not trained & set(held) and len(trained) + len(held) == 64

    # results: OpenAI's CSV first, then the held-out records as the user sent them
    csv_id, held_id = job.result_files
    assert held_event.data == {
        "held_out": 6,
        "training_examples": 64,
        "stratified_by": "answer",
        "file": held_id,
    }
    with worker.sessions() as s:
        files = {f.id: f for f in s.scalars(select(File).where(File.id.in_(job.result_files)))}
    assert files[csv_id].filename == "step_metrics.csv"
    assert (files[held_id].filename, files[held_id].purpose) == (
        "validation_split.jsonl",
        "fine-tune-results",
    )
    sent = capitals_jsonl.read_text().splitlines()
    assert Path(files[held_id].path).read_text().splitlines() == [sent[i] for i in held]

    # "auto" n_epochs and learning_rate_multiplier: numbers once the library chose them, with why as events
    assert isinstance(job.resolved["n_epochs"], int | float) and job.resolved["batch_size"] == 4
    lrm = job.resolved["learning_rate_multiplier"]
    assert isinstance(lrm, float) and lrm > 0
    messages = _messages(worker, job_id)
    assert any(m.startswith("n_epochs set to ") for m in messages)
    assert any(m.startswith(f"learning_rate_multiplier set to {lrm} (learning rate ") for m in messages)


def test_validation_split_zero_turns_it_off_and_a_seed_gives_the_same_split(
    tmp_path, tiny_base, db_url, capitals_jsonl
):
    worker = Worker(service_settings(tmp_path / "data", tiny_base, db_url))
    train = add_file(worker.sessions, capitals_jsonl)
    one = dict(FAST, max_steps=1, eval_every=1)
    off = _job(worker, train, validation_split=0, **FAST)
    same = [_job(worker, train, seed=7, **one) for _ in range(2)]
    other = _job(worker, train, seed=8, validation_split=0.25, **one)
    assert worker.run(max_jobs=4) == 4

    job = _get(worker, off)
    assert job.status == "succeeded", job.error
    events = _events(worker, off)
    assert not [e for e in events if e.type == "metrics" and "valid_loss" in e.data]
    assert not [e for e in events if e.message.startswith("Held out")]
    assert any(e.message.startswith("validation_split is 0: no records held out") for e in events)
    assert len(job.result_files) == 1 and _held_out_ids(job) == []

    a, b, c = (_get(worker, j) for j in (*same, other))
    assert _held_out_ids(a) == _held_out_ids(b) and len(_held_out_ids(a)) == 6
    assert len(_held_out_ids(c)) == 16 and set(_held_out_ids(c)) != set(_held_out_ids(a))


def test_the_sink_reports_resolved_hyperparameters_once(tmp_path, tiny_base, db_url, capitals_jsonl):
    """The message event the library's set-up sends with "resolved": the job's n_epochs and
    learning_rate_multiplier become numbers (the rate over the base rate, 1e-2 here), each with its reason."""
    settings = service_settings(tmp_path / "data", tiny_base, db_url)
    worker = Worker(settings)
    job_id = _job(worker, add_file(worker.sessions, capitals_jsonl))
    with store.transaction(worker.sessions) as s:
        row = s.scalar(select(Job).where(Job.id == job_id))
        row.status, row.resolved = "running", openai.resolve(row.hyperparameters, 64)
        row.run_dir = str(tmp_path / "run")
        row.lease_owner, row.lease_token = "w-test", "token"  # the sink writes only for the lease's holder
    job = _get(worker, job_id)
    lease = Lease(job_id, "token", 1, False, None)
    run = JobRun(settings, worker.sessions, "w-test", lease, threading.Event(), threading.Event())
    cfg = openai.run_config(
        run_dir=Path(job.run_dir),
        base_source=str(tiny_base),
        train_path=capitals_jsonl,
        validation_path=None,
        training_type="lora",
        resolved=job.resolved,
        extras={},
        seed=0,
        base_learning_rate=openai.base_learning_rate("lora", settings),
        max_length=64,
    )
    assert job.resolved["n_epochs"] == job.resolved["learning_rate_multiplier"] == "auto"  # until it is known
    sink = _EventSink(run, cfg)
    payload = {
        "message": "train.epochs = 12 (auto): ...",
        "resolved": {
            "train.learning_rate": {"value": 0.0014, "why": "the prior for width 64"},
            "train.epochs": {"value": 12, "why": "64 examples are few"},
        },
    }
    sink("message", payload)
    sink("message", payload)  # a resumed run sends the same values again
    job = _get(worker, job_id)
    assert (job.resolved["n_epochs"], job.resolved["learning_rate_multiplier"]) == (12, 0.14)
    assert job.resolved["batch_size"] == 8
    messages = _messages(worker, job_id)
    assert messages.count("n_epochs set to 12: 64 examples are few") == 1
    assert (
        messages.count("learning_rate_multiplier set to 0.14 (learning rate 0.0014): the prior for width 64")
        == 1
    )
    assert json.dumps(job.resolved)  # still plain JSON

    # a resumed job whose held-out split is already a result file does not record it again
    assert sink._held_out_pending
    with store.transaction(worker.sessions) as s:
        held = run.result_file(s, "alice", openai.HELD_OUT_FILENAME, b"{}\n")
        s.scalar(select(Job).where(Job.id == job_id)).result_files = [held]
    assert not _EventSink(run, cfg)._held_out_pending


def test_a_bad_validation_split_is_a_4xx_naming_the_field(tmp_path, tiny_base, db_url, capitals_jsonl):
    import openai as openai_client

    from tests.jobs.service_fixtures import client, live_server

    with live_server(service_settings(tmp_path / "data", tiny_base, db_url)) as srv:
        c = client(srv)
        train = c.files.create(file=("caps.jsonl", capitals_jsonl.read_bytes()), purpose="fine-tune")
        for bad in (0.7, "half", True):
            with pytest.raises(openai_client.UnprocessableEntityError) as e:
                c.fine_tuning.jobs.create(
                    model="tiny",
                    training_file=train.id,
                    method={
                        "type": "supervised",
                        "supervised": {"hyperparameters": {"validation_split": bad}},
                    },
                )
            assert e.value.body["param"] == "method.supervised.hyperparameters.validation_split"
            assert 'validation_split must be "auto" or a fraction from 0 to 0.5' in e.value.message
        job = c.fine_tuning.jobs.create(
            model="tiny", training_file=train.id, hyperparameters={"validation_split": 0.2}
        )
        assert job.hyperparameters.n_epochs == "auto"  # reported as a number once training sets up
        assert job.model_extra["hyperparameter_extensions"] == {"validation_split": 0.2}
