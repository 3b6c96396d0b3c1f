"""The worker's lease loop: `Worker` leases queued jobs from the database one at a time and hands each to
`lifecycle.JobRun`, while `_Heartbeat` renews the job's lease every `heartbeat_s`. Start several workers
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
from tuneforge.jobs.lifecycle import JobRun
from tuneforge.jobs.store import Lease
from tuneforge.settings import Settings

log = logging.getLogger("tuneforge.worker")


class Worker:
    def __init__(self, settings: Settings, worker_id: str | None = None):
        self.settings = settings
        self.id = worker_id or f"worker-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        settings.ensure_dirs()
        self.engine = store.make_engine(settings.db_url)
        store.init_db(self.engine)
        self.sessions: sessionmaker[Session] = store.session_factory(self.engine)
        self._stop = threading.Event()

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
        """Stop after the current job; a running job stops at its next step and goes back to the queue."""
        self._stop.set()

    def run_one(self) -> bool:
        """Lease one job and take it to its next state; False when none was waiting."""
        lease = store.lease_job(self.sessions, self.id, self.settings.lease_s)
        if lease is None:
            return False
        self.process(lease)
        return True

    def process(self, lease: Lease) -> None:
        beat = _Heartbeat(self, lease)
        beat.start()
        try:
            JobRun(self.settings, self.sessions, self.id, lease, lost=beat.lost, stopping=self._stop).run()
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
    """Renews the job's lease; if it is lost, says so (the training loop then stops at its next step)."""

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
