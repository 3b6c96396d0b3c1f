"""The job store on SQLite and on a real PostgreSQL server: leases are exclusive under contention, a dead worker's
lease is taken over, a stale worker cannot write over the new holder, pagination is stable."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from tuneforge.jobs import store
from tuneforge.jobs.store import Job


def _job(s, owner: str = "alice", status: str = "queued") -> Job:
    job = Job(
        id=store.new_id("ftjob"),
        owner=owner,
        model="tiny",
        training_file="file-x",
        seed=0,
        hyperparameters={},
        status=status,
        created_at=int(store.now()),
        failures=[],
        result_files=[],
        extras={},
    )
    s.add(job)
    return job


def test_each_job_is_leased_by_exactly_one_of_many_concurrent_workers(sessions):
    with store.transaction(sessions) as s:
        ids = {_job(s).id for _ in range(6)}
    won: list[tuple[str, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        while (lease := store.lease_job(sessions, f"w{n}", lease_s=30)) is not None:
            with lock:
                won.append((lease.job_id, f"w{n}"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(j for j, _ in won) == sorted(ids)  # every job once, none twice
    with sessions() as s:
        rows = s.scalars(select(Job)).all()
        assert all(r.attempts == 1 and r.lease_owner is not None for r in rows)


def test_an_expired_lease_is_taken_over_and_the_old_holder_is_locked_out(sessions):
    with store.transaction(sessions) as s:
        job_id = _job(s).id
    first = store.lease_job(sessions, "w1", lease_s=0.3)
    assert first is not None and first.attempt == 1 and not first.recovered
    with store.transaction(sessions) as s:
        s.scalar(select(Job).where(Job.id == job_id)).status = "running"
    assert store.lease_job(sessions, "w2", lease_s=30) is None  # still held
    assert store.renew_lease(sessions, first, lease_s=0.3)  # a heartbeat keeps it
    time.sleep(0.45)  # no heartbeat: the worker is presumed dead
    second = store.lease_job(sessions, "w2", lease_s=30)
    assert second is not None and second.job_id == job_id
    assert second.recovered and second.previous_owner == "w1" and second.attempt == 2
    assert not store.renew_lease(sessions, first, lease_s=30)  # the old holder learns it lost the job
    with store.transaction(sessions) as s:
        assert not store.finish_lease(s, first, status="succeeded")
    with store.transaction(sessions) as s:
        assert store.finish_lease(s, second, status="succeeded")
    with sessions() as s:
        job = s.scalar(select(Job).where(Job.id == job_id))
        assert job.status == "succeeded" and job.lease_owner is None


def test_paused_and_finished_jobs_are_not_leased(sessions):
    with store.transaction(sessions) as s:
        for status in ("paused", "succeeded", "failed", "cancelled"):
            _job(s, status=status)
    assert store.lease_job(sessions, "w1", lease_s=30) is None


def test_cursor_pages_are_newest_first_and_complete(sessions):
    with store.transaction(sessions) as s:
        ids = [_job(s).id for _ in range(7)]
        _job(s, owner="bob")
    seen, after = [], None
    with sessions() as s:
        while True:
            after_pk = s.scalar(select(Job.pk).where(Job.id == after)) if after else None
            pg = store.page(s, select(Job).where(Job.owner == "alice"), Job, after_pk, 3)
            seen += [j.id for j in pg.rows]
            if not pg.has_more:
                break
            after = pg.rows[-1].id
    assert seen == ids[::-1]


def test_api_keys_are_stored_hashed_and_resolve_to_their_owner(sessions):
    with store.transaction(sessions) as s:
        store.sync_api_keys(s, {"sk-secret-key-1": "alice"})
        made = store.create_api_key(s, "bob")
    with sessions() as s:
        assert store.owner_of_key(s, "sk-secret-key-1") == "alice"
        assert store.owner_of_key(s, made) == "bob"
        assert store.owner_of_key(s, "sk-wrong") is None
        hashes = s.scalars(select(store.ApiKey.key_hash)).all()
        assert "sk-secret-key-1" not in hashes and len(hashes) == 2


def test_a_database_from_before_a_column_was_added_is_upgraded_and_keeps_its_jobs(db_url):
    from sqlalchemy import text

    engine = store.make_engine(db_url)
    store.init_db(engine)
    factory = store.session_factory(engine)
    with store.transaction(factory) as s:
        job_id = _job(s).id
    with engine.begin() as conn:  # the jobs table as the first release made it
        conn.execute(text("ALTER TABLE jobs DROP COLUMN method_type"))
    store.init_db(engine)  # the server starting on the old database
    with factory() as s:
        assert s.scalar(select(Job).where(Job.id == job_id)).method_type == "supervised"
    engine.dispose()
