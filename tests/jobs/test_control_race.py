"""Cancel, pause and resume fired at the same moment, many times, on SQLite and on a real PostgreSQL server: through
the live API (the race was in the routes, issue 15 item 3) with no worker, and with an in-process worker acting on
the requests at the same time (its training loop replaced by a few fast steps that poll the job's control, as the
real loop's `should_stop` does). Every round checks: a cancel answered 200 ends cancelled with no pending control;
no job ends in a state the control table (store.py, "job control") does not allow; the job's events, replayed
through that table, tell one story that ends in the job's state, with one "Job cancelled" for a cancelled job.
The table itself is checked row by row against the store, the route side and the worker's side."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest
from sqlalchemy import select, update

from tests.jobs.service_fixtures import ALICE, add_file, live_server, service_settings, wait_for
from tuneforge.jobs import lifecycle, store
from tuneforge.jobs.store import FineTunedModel, Job, JobEvent
from tuneforge.jobs.worker import Worker

pytestmark = pytest.mark.timeout(600)

ROUNDS = 50  # a paused job receiving resume + pause + cancel at once, no worker
WORKER_ROUNDS = 30  # requests racing a worker that acts on them
STEPS, STEP_S = 40, 0.004  # the stand-in training run: about a quarter of a second
AUTH = {"Authorization": f"Bearer {ALICE}"}


# ---------------------------------------------------------------------------------------------- helpers
def _job(sessions, status: str = "validating_files", **values) -> str:
    """A job row as POST /v1/fine_tuning/jobs writes it (on the file `values["training_file"]`)."""
    job_id = store.new_id("ftjob")
    with store.transaction(sessions) as s:
        s.add(
            Job(
                id=job_id,
                owner="alice",
                model="tiny",
                training_file=values.pop("training_file", "file-x"),
                seed=0,
                training_type="lora",
                hyperparameters={"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": "auto"},
                extras={},
                status=status,
                created_at=int(store.now()),
                failures=[],
                result_files=[],
                **values,
            )
        )
        s.flush()
        store.add_event(s, job_id, f"Created fine-tuning job: {job_id}")
    return job_id


def _row(sessions, job_id: str) -> Job:
    with sessions() as s:
        return s.scalar(select(Job).where(Job.id == job_id))


def _events(sessions, job_id: str) -> list[str]:
    with sessions() as s:
        return list(
            s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.pk))
        )


class Requests:
    """One keep-alive connection per request slot, so that requests fired together leave together."""

    def __init__(self, url: str, n: int = 4):
        self.clients = [httpx.Client(base_url=url, headers=AUTH, timeout=60) for _ in range(n)]

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def one(self, job_id: str, action: str) -> tuple[str, int, dict]:
        r = self.clients[0].post(f"/fine_tuning/jobs/{job_id}/{action}")
        return action, r.status_code, r.json()

    def fire(
        self, job_id: str, actions: tuple[str, ...], jitter_s: float = 0.0
    ) -> list[tuple[str, int, dict]]:
        """`actions` sent at the same moment (each after a random delay up to `jitter_s`)."""
        start = threading.Barrier(len(actions))
        out: list[tuple[str, int, dict] | BaseException | None] = [None] * len(actions)

        def send(i: int) -> None:
            try:
                start.wait()
                if jitter_s:
                    time.sleep(random.uniform(0, jitter_s))
                r = self.clients[i].post(f"/fine_tuning/jobs/{job_id}/{actions[i]}")
                out[i] = (actions[i], r.status_code, r.json())
            except BaseException as e:  # reported below, in the test's thread
                out[i] = e

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(actions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for o in out:
            if not isinstance(o, tuple):
                raise AssertionError(f"a request failed: {o!r}")
        return out  # type: ignore[return-value]


def _check_answers(answers: list[tuple[str, int, dict]]) -> None:
    """200 with the job as the request left it, or 400 invalid_job_state in OpenAI's error shape; never 5xx."""
    left = {
        "cancel": ("cancelled", "running"),
        "pause": ("paused", "running"),
        "resume": ("queued", "running"),
    }
    for action, code, body in answers:
        assert code in (200, 400), (action, code, body)
        if code == 200:
            assert body["status"] in left[action], (action, body["status"])
        else:
            assert set(body) == {"error"} and body["error"]["code"] == "invalid_job_state", body
            assert set(body["error"]) == {"message", "type", "param", "code"}


# The events that move a job, as (message prefix, the move): what the control table allows, replayed.
def _replay(messages: list[str]) -> tuple[str, str | None]:
    """The (status, control) the job's events say it is in; AssertionError at a move the table does not allow."""
    status, control = None, None
    for i, m in enumerate(messages):
        where = f"event {i} {m!r} after {messages[:i]}"
        if m.startswith("Created fine-tuning job"):
            assert status is None, where
            status = "validating_files"
        elif m.startswith(
            "Files validated"
        ):  # queued already if paused and resumed before its files were checked
            assert status in ("validating_files", "queued") and control is None, where
            status = "queued"
        elif m.startswith(("Fine-tuning job started", "Fine-tuning job resumed")):
            assert status in ("queued", "running") and control is None, where
            status = "running"
        elif m == "Cancel requested":
            assert status == "running" and control != "cancel", where
            control = "cancel"
        elif m == "Pause requested":
            assert status == "running" and control is None, where
            control = "pause"
        elif m == "Pause request withdrawn":
            assert status == "running" and control == "pause", where
            control = None
        elif m.startswith("Job paused"):  # at once by the route, or by the worker on its request
            by_worker = (status, control) == ("running", "pause")
            assert status in ("validating_files", "queued") or by_worker, where
            status, control = "paused", None
        elif m == "Job resumed":
            assert status == "paused", where
            status = "queued"
        elif m == "Job cancelled":
            assert status not in store.TERMINAL, where
            status, control = "cancelled", None
        elif m.startswith("Worker ") and "re-queued" in m:  # the loop stopped, the pause was withdrawn
            assert status == "running" and control is None, where
            status = "queued"
        elif m == "The job has successfully completed":
            assert status == "running" and control != "cancel", where  # a pending cancel wins over the finish
            status, control = "succeeded", None
        elif m.startswith("Validating "):
            assert status in ("validating_files", "queued"), where
        elif m.startswith("New fine-tuned model created"):
            assert status == "running", where
        else:
            raise AssertionError(f"unexpected event: {where}")
    return status, control  # type: ignore[return-value]


def _check_story(sessions, job_id: str, cancel_ok: bool) -> Job:
    """The round's end: the job's state is one the table allows, its events replay to it, and it is cancelled
    exactly when a cancel was answered 200."""
    job = _row(sessions, job_id)
    messages = _events(sessions, job_id)
    story = f"{job.status}/{job.control}:\n" + "\n".join(messages)
    assert job.control is None and job.lease_owner is None, story
    assert job.status in ("paused", "queued", "succeeded", "cancelled"), story
    assert _replay(messages) == (job.status, None), story
    assert messages.count("Job cancelled") == (job.status == "cancelled"), story
    assert messages.count("Cancel requested") <= 1, story
    if cancel_ok:  # a cancel answered 200 is never lost
        assert job.status == "cancelled" and job.finished_at, story
    else:
        assert job.status != "cancelled", story
    if job.status == "cancelled":
        assert job.fine_tuned_model is None, story
    return job


@pytest.fixture
def service(tmp_path, db_url):
    base = tmp_path / "base"  # never loaded: the stand-in training below needs no model
    base.mkdir()
    settings = service_settings(
        tmp_path / "data", base, db_url, control_poll_s=0.001, poll_s=0.02, lease_s=5.0
    )
    with live_server(settings) as srv:
        requests = Requests(srv.url)
        try:
            yield srv, settings, requests
        finally:
            requests.close()


def _fake_train(at_end=None):
    """JobRun._train without a model: STEPS short steps, polling should_stop before each as the loop does; at
    the end `at_end(run)`, then the summary finetune returns."""

    def train(run: lifecycle.JobRun, cfg, resume: bool) -> dict:
        sink = lifecycle._EventSink(run, cfg)
        for step in range(STEPS):
            if sink.should_stop():
                return {"train": {"stopped_by_request": True, "steps": step}}
            time.sleep(STEP_S)
        if at_end is not None:
            at_end(run)
        return {"train": {"steps": STEPS, "tokens_seen": 10 * STEPS}}

    return train


class _WorkerThread:
    def __init__(self, settings):
        self.worker = Worker(settings, worker_id="worker-race")
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as e:  # reported by the test
            self.error = e

    def __enter__(self) -> Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc) -> None:
        self.worker.stop()
        self.thread.join(30)
        self.worker.engine.dispose()
        assert self.error is None, f"the worker died: {self.error!r}"


# ----------------------------------------------------------------------------------------- the races
def test_resume_pause_and_cancel_at_once_on_a_paused_job(service):
    """The probe's rounds: with no worker, a cancel answered 200 cancels at once (answer and end: cancelled), and
    nothing brings a cancelled job back."""
    srv, _settings, req = service
    sessions = srv.app.state.sessions
    for n in range(ROUNDS):
        job_id = _job(sessions)
        _, code, body = req.one(job_id, "pause")
        assert (code, body["status"]) == (200, "paused")
        actions = ("resume", "pause", "cancel") if n % 2 == 0 else ("cancel", "resume", "pause")
        answers = req.fire(job_id, actions)
        cancel_ok = any(a == "cancel" and code == 200 for a, code, _ in answers)
        job = _check_story(sessions, job_id, cancel_ok)
        _check_answers(answers)
        for action, code, body in answers:
            if action == "cancel" and code == 200:
                # nothing runs: cancelled at once, not left as a request
                assert body["status"] == "cancelled", answers
        if job.status == "cancelled":  # later requests leave it cancelled
            for action in ("resume", "pause", "cancel"):
                assert req.one(job_id, action)[1] == 400
            assert _row(sessions, job_id).status == "cancelled"
        elif job.status == "paused":
            assert req.one(job_id, "resume")[1:2] == (200,) and _row(sessions, job_id).status == "queued"
        assert not cancel_ok or _row(sessions, job_id).status == "cancelled"


PATTERNS = [  # what each round fires at once (one round in five has no cancel: it must not end cancelled)
    ("pause", "cancel", "resume"),
    ("cancel", "pause"),
    ("resume", "pause", "cancel", "pause"),
    ("pause", "resume", "pause"),
    ("cancel", "cancel", "pause", "resume"),
]


def test_requests_racing_a_worker_that_acts_on_them(service, capitals_jsonl, monkeypatch):
    """Requests fired while the worker leases, validates, starts, stops and finishes the job: a cancel answered
    200 ends cancelled (at once, or at the worker's next step), a paused job resumes once and then succeeds."""
    srv, settings, req = service
    sessions = srv.app.state.sessions
    monkeypatch.setattr(lifecycle.JobRun, "_train", _fake_train())
    train = add_file(sessions, capitals_jsonl)
    rng = random.Random(0)

    def settled(job_id: str) -> Job | None:
        job = _row(sessions, job_id)
        if job.lease_owner is None and job.status in ("paused", *store.TERMINAL):
            return job
        return None

    with _WorkerThread(settings):
        for n in range(WORKER_ROUNDS):
            job_id = _job(sessions, training_file=train)
            if n % 3:  # while it runs; else while the worker takes it up and checks its file
                wait_for(
                    lambda j=job_id: _row(sessions, j).status == "running", 30, "the job to run", every=0.002
                )
            actions = PATTERNS[n % len(PATTERNS)]
            answers = req.fire(job_id, actions, jitter_s=rng.choice((0.0, 0.02, 0.1, 0.3)))
            cancel_ok = any(a == "cancel" and code == 200 for a, code, _ in answers)
            job = wait_for(lambda j=job_id: settled(j), 30, "the job to settle", every=0.005)
            _check_answers(answers)
            if job.status == "paused":  # resumed once, it runs to its end
                assert not cancel_ok, "\n".join(_events(sessions, job_id))
                _, code, body = req.one(job_id, "resume")
                assert (code, body["status"]) == (200, "queued")
                job = wait_for(lambda j=job_id: settled(j), 30, "the resumed job to end", every=0.005)
                assert job.status == "succeeded", "\n".join(_events(sessions, job_id)) + f"\n{job.error}"
            job = _check_story(sessions, job_id, cancel_ok)
            assert job.status in ("succeeded", "cancelled"), job.status
            if job.status == "succeeded":
                assert job.fine_tuned_model and job.finished_at
                assert req.one(job_id, "cancel")[1] == 400  # a finished job stays finished
                assert _row(sessions, job_id).status == "succeeded"


def test_a_cancel_answered_at_the_last_step_wins_over_the_finish(service, capitals_jsonl, monkeypatch):
    """The run ends just after a cancel was answered 200 (too late for the loop to see it): the job ends
    cancelled, with no fine-tuned model; a pause at that moment gives way to the finish instead."""
    srv, settings, req = service
    sessions = srv.app.state.sessions
    train = add_file(sessions, capitals_jsonl)
    asked: dict[str, tuple] = {}

    def request_at_end(run: lifecycle.JobRun) -> None:
        action = asked["action"]
        asked["answer"] = req.one(run.lease.job_id, action)

    monkeypatch.setattr(lifecycle.JobRun, "_train", _fake_train(at_end=request_at_end))
    ends = {}
    with _WorkerThread(settings):
        for action in ("cancel", "pause"):
            asked["action"] = action
            job_id = _job(sessions, training_file=train)
            ends[action] = wait_for(
                lambda i=job_id: (j := _row(sessions, i)).status in store.TERMINAL and j, 30, "the job's end"
            )
            _, code, body = asked["answer"]
            assert (code, body["status"]) == (200, "running")  # a request for the worker
            _check_story(sessions, job_id, cancel_ok=action == "cancel")
    assert ends["cancel"].status == "cancelled" and ends["cancel"].fine_tuned_model is None
    assert ends["pause"].status == "succeeded" and ends["pause"].fine_tuned_model
    with sessions() as s:
        models = s.scalars(select(FineTunedModel.job_id)).all()
    assert models == [ends["pause"].id]  # the cancelled run made no model


# ----------------------------------------------------------------------------------------- the table
# (request, status, pending control, lease) → (status, control) after, or 400; "*" matches anything; the first
# row that matches decides. Written from the rules, not from the store's code.
TABLE = [
    ("*", "succeeded|failed|cancelled", "*", "*", 400),
    ("cancel", "validating_files|queued|paused", "*", "*", ("cancelled", None)),
    ("cancel", "running", "*", "none|expired", ("cancelled", None)),
    ("cancel", "running", "*", "live", ("running", "cancel")),
    ("pause", "validating_files|queued", "*", "*", ("paused", None)),
    ("pause", "running", "cancel", "*", 400),
    ("pause", "running", "*", "*", ("running", "pause")),
    ("pause", "paused", "*", "*", 400),
    ("resume", "paused", "*", "*", ("queued", None)),
    ("resume", "running", "pause", "*", ("running", None)),
    ("resume", "*", "*", "*", 400),
]
STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")


def _expected(action: str, status: str, control: str | None, lease: str):
    for a, st, c, le, to in TABLE:
        if (
            a in ("*", action)
            and (st == "*" or status in st.split("|"))
            and (c == "*" or c == control)
            and (le == "*" or lease in le.split("|"))
        ):
            return to
    raise AssertionError("the table has no row for this")


def test_every_request_in_every_state_does_what_the_table_says(sessions):
    t = store.now()
    leases = {"none": {}, "live": {"lease_expires_at": t + 600}, "expired": {"lease_expires_at": t - 1}}
    for action in store.CONTROLS:
        for status in STATUSES:
            for control in (None, "pause", "cancel"):
                for lease, values in leases.items():
                    held = {"lease_owner": "w1", "lease_token": "tok", **values} if values else {}
                    job_id = _job(sessions, status=status, control=control, **held)
                    case = (action, status, control, lease)
                    with sessions() as s:
                        answer = store.control_job(s, job_id, action)
                        s.commit()
                    job, events = _row(sessions, job_id), _events(sessions, job_id)[1:]
                    want = _expected(*case)
                    if want == 400:
                        assert answer.refused and not events, case
                        assert (job.status, job.control, job.lease_token) == (
                            status,
                            control,
                            held.get("lease_token"),
                        ), case
                        continue
                    assert answer.refused is None and (job.status, job.control) == want, (case, answer)
                    assert (answer.status, answer.control) == want, case
                    changed = want != (status, control)
                    assert events == ([answer.event] if changed else []), (case, events)
                    if job.status in ("paused", "cancelled") and changed:  # decided by the request
                        assert job.lease_owner is None and job.lease_token is None, case
                    elif job.status == "running":  # the worker keeps its lease and acts on the request
                        assert job.lease_token == held.get("lease_token"), case
                    assert bool(job.finished_at) == (job.status == "cancelled"), case


def test_the_worker_ends_its_run_as_the_pending_control_says(sessions):
    """store.finish_run: a pending cancel always wins, a pending pause wins over the queue, not over the end;
    a worker whose lease a request let go writes nothing; a step forward waits for no control."""
    ends = {
        ("succeeded", None): "succeeded",
        ("succeeded", "pause"): "succeeded",
        ("succeeded", "cancel"): "cancelled",
        ("failed", None): "failed",
        ("failed", "pause"): "failed",
        ("failed", "cancel"): "cancelled",
        ("queued", None): "queued",
        ("queued", "pause"): "paused",
        ("queued", "cancel"): "cancelled",
    }

    def held_job(token: str) -> tuple[str, store.Lease]:
        """A queued job as a worker holds it right after leasing it."""
        lease = {"lease_owner": "w1", "lease_token": token, "lease_expires_at": store.now() + 60}
        job_id = _job(sessions, status="queued", **lease)
        return job_id, store.Lease(job_id, token, 1, False, None)

    for (outcome, control), want in ends.items():
        job_id, lease = held_job(f"tok-{outcome}-{control}")
        with store.transaction(sessions) as s:
            assert store.advance_run(s, lease, "running", ("queued",)) is None
            s.execute(update(Job).where(Job.id == job_id).values(control=control))
        with store.transaction(sessions) as s:
            got = store.finish_run(s, lease, outcome, values={"fine_tuned_model": "ft:m"}, always={"step": 7})
        job = _row(sessions, job_id)
        assert got == want == job.status, (outcome, control, got)
        assert job.control is None and job.lease_token is None and job.step == 7
        assert (job.fine_tuned_model == "ft:m") == (want == outcome)
        assert bool(job.finished_at) == (want in store.TERMINAL)

    # a pending control stops a step forward; a lease let go by a request stops every write
    job_id, lease = held_job("tok-last")
    with store.transaction(sessions) as s:
        s.execute(update(Job).where(Job.id == job_id).values(control="pause"))
    with store.transaction(sessions) as s:
        assert store.advance_run(s, lease, "running", ("queued",)) == "pause"
    with sessions() as s:
        assert store.control_job(s, job_id, "cancel").status == "cancelled"
        s.commit()
    with store.transaction(sessions) as s:
        assert store.advance_run(s, lease, "running", ("queued",)) == "lost"
        assert store.finish_run(s, lease, "succeeded") is None
    assert _row(sessions, job_id).status == "cancelled"
