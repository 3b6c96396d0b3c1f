"""The worker's lease loop: `Worker` leases queued jobs from the database one at a time and hands each to
`lifecycle.JobRun` (a fine-tuning job) or `exports.ExportRun` (an export of a fine-tuned model), while `_Heartbeat`
renews the lease every `heartbeat_s`. Start several workers
(`tuneforge worker`, or `tuneforge serve --workers N`) for several jobs at once; if one dies (kill -9, power loss),
its lease runs out after `lease_s` and another worker leases the job and resumes it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from sqlalchemy.orm import Session, sessionmaker

from tuneforge.jobs import store
from tuneforge.jobs.exports import ExportRun
from tuneforge.jobs.lifecycle import JobRun
from tuneforge.jobs.store import ExportJob, Job, Lease
from tuneforge.settings import Settings

log = logging.getLogger("tuneforge.worker")


class Worker:
    def __init__(self, settings: Settings, worker_id: str | None = None):
        self.settings = settings
        self.id = worker_id or f"worker-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        settings.ensure_dirs()
        self.engine = store.engine_for(settings)
        store.init_db(self.engine)
        self.sessions: sessionmaker[Session] = store.session_factory(self.engine)
        self._stop = threading.Event()
        self._exports_first = False

    def run(self, max_jobs: int | None = None, idle_exit: bool = False) -> int:
        """Lease and run jobs until stopped (or `max_jobs` are done, or none is left with idle_exit)."""
        done = 0
        log.info("worker %s polling %s", self.id, _safe_url(self.settings.db_url))
        while not self._stop.is_set():
            self._beat(None)
            if self.run_one():
                done += 1
                if max_jobs is not None and done >= max_jobs:
                    break
                continue
            if idle_exit:
                break
            self._stop.wait(self.settings.poll_s)
        return done

    def stop(self) -> None:
        """Stop after the current job; a running job stops at its next step and goes back to the queue (an
        export runs to its end)."""
        self._stop.set()

    def run_one(self) -> bool:
        """Lease one job (or export) and take it to its next state; False when none was waiting.

        Fine-tuning jobs and exports take turns: after a job the worker looks for an export first, after an export
        for a job. An export takes minutes and a fine-tune up to hours, so an export should not wait behind a
        queue of fine-tunes; taking turns (rather than exports always first) means a stream of exports cannot
        hold the fine-tunes back either."""
        tables = (ExportJob, Job) if self._exports_first else (Job, ExportJob)
        for table in tables:
            lease = store.lease_job(self.sessions, self.id, self.settings.lease_s, table=table)
            if lease is not None:
                self._exports_first = table is Job
                self.process(lease)
                return True
        return False

    def process(self, lease: Lease) -> None:
        if lease.table is Job and self.settings.executor == "ray":
            from tuneforge.jobs.ray_executor import process_on_ray

            process_on_ray(self, lease)  # the same process(), as a task on the Ray cluster
            return
        beat = _Heartbeat(self, lease)
        beat.start()
        try:
            if lease.table is ExportJob:
                ExportRun(self.settings, self.sessions, self.id, lease, lost=beat.lost).run()
            else:
                JobRun(
                    self.settings, self.sessions, self.id, lease, lost=beat.lost, stopping=self._stop
                ).run()
        finally:
            beat.stop()
            self._beat(None)

    def _beat(self, job_id: str | None) -> None:
        """The worker row's heartbeat (GET /health counts live workers), with the job it holds."""
        with store.transaction(self.sessions) as s:
            store.heartbeat_worker(s, self.id, socket.gethostname(), os.getpid(), job_id)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class _Heartbeat(threading.Thread):
    """Renews the lease; if it is lost, says so (a training loop then stops at its next step; an export, which
    cannot stop half-way, learns it when it ends)."""

    def __init__(self, worker: Worker, lease: Lease):
        super().__init__(daemon=True, name=f"heartbeat-{lease.job_id}")
        self.worker, self.lease = worker, lease
        self.lost = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        s = self.worker.settings
        while not self._done.wait(s.heartbeat_s):
            try:
                if not store.renew_lease(self.worker.sessions, self.lease, s.lease_s):
                    self.lost.set()
                    return
                self.worker._beat(self.lease.job_id)
            except Exception:  # the database is briefly unreachable: try again at the next beat
                log.warning("heartbeat for %s failed", self.lease.job_id, exc_info=True)

    def stop(self) -> None:
        self._done.set()
