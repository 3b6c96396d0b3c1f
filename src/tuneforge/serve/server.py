"""`tuneforge serve`: the API server (uvicorn) plus the worker processes that run fine-tuning jobs.

Workers are separate processes so that training never slows the API down and a crash in one job cannot take the
server with it. They die with the server (Linux: PR_SET_PDEATHSIG); a worker that exits on its own is started
again. Jobs they held are resumed from their last checkpoint by the next worker to lease them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import uvicorn
from sqlalchemy import func, select

from tuneforge.jobs import store
from tuneforge.settings import Settings, child_env

log = logging.getLogger("tuneforge.serve")


def ensure_api_key(settings: Settings) -> str | None:
    """With no key configured and none stored, create one (owner `default`), save it in the data dir and return
    it so that it can be shown once."""
    settings.ensure_dirs()
    engine = store.engine_for(settings)
    store.init_db(engine)
    try:
        with store.transaction(store.session_factory(engine)) as s:
            store.sync_api_keys(s, settings.api_keys)
            if s.scalar(select(func.count()).select_from(store.ApiKey)):
                return None
            key = store.create_api_key(s, "default")
        path = settings.data_dir / "api_key"
        path.write_text(key + "\n")
        path.chmod(0o600)
        return key
    finally:
        engine.dispose()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class WorkerPool:
    """N `tuneforge worker` processes, restarted if they exit."""

    def __init__(self, settings: Settings, n: int):
        self.settings, self.n = settings, n
        self.procs: list[subprocess.Popen] = []
        self._stopping = threading.Event()
        self._watch: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "tuneforge.cli", "worker"]
        return subprocess.Popen(
            cmd, env=child_env(self.settings), preexec_fn=_die_with_parent if os.name == "posix" else None
        )

    def start(self) -> None:
        self.procs = [self._spawn() for _ in range(self.n)]
        if self.n:
            self._watch = threading.Thread(target=self._supervise, daemon=True, name="worker-pool")
            self._watch.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(2.0):
            for i, p in enumerate(self.procs):
                if p.poll() is not None and not self._stopping.is_set():
                    log.warning("worker pid %s exited with %s; starting another", p.pid, p.returncode)
                    self.procs[i] = self._spawn()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: each worker checkpoints its job and puts it back in the queue, then exits."""
        self._stopping.set()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()


def serve(
    settings: Settings, host: str, port: int, workers: int | None = None, log_level: str = "info"
) -> None:
    from tuneforge.serve.app import create_app

    key = ensure_api_key(settings)
    if key is not None:
        print(
            f"No API key configured: created one for tenant 'default' (saved in {settings.data_dir / 'api_key'}):\n"
            f"  {key}\nSet TUNEFORGE_API_KEYS=key=owner,... to choose your own.",
            file=sys.stderr,
        )
    n = settings.workers if workers is None else workers
    pool = WorkerPool(settings, n)
    pool.start()
    print(
        f"tuneforge serving on http://{host}:{port}/v1 (docs: /docs), {n} worker(s), data in {settings.data_dir}",
        file=sys.stderr,
    )
    server = _Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level=log_level))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, server.handle_exit)
    try:
        server.run()
    finally:
        pool.stop()  # workers checkpoint and re-queue their jobs; then a clean exit


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal capture (which re-raises SIGTERM after shutdown and would end the
    process before the workers are stopped)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def run_worker(settings: Settings) -> None:
    """`tuneforge worker`: run jobs until SIGTERM/SIGINT (a job in progress is checkpointed and re-queued)."""
    from tuneforge.jobs.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    worker = Worker(settings)

    def _stop(signum, _frame) -> None:
        log.info("worker %s stopping (signal %s)", worker.id, signum)
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker.run()
