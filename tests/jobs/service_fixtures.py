"""Fixtures shared by tests/jobs and tests/serve: a real PostgreSQL server, service settings on the tiny model, a
real uvicorn server on 127.0.0.1, worker processes, and the official OpenAI client.

Imported by both folders' conftest.py. PostgreSQL 15 (`initdb`, `pg_ctl` on PATH or in /usr/lib/postgresql/15/bin)
is started once per session in a temporary folder on a free port — as the `postgres` user when the tests run as
root, since postgres refuses to run as root. Tests that need it are skipped, with the reason, if it cannot start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, capitals_records, write_jsonl

KEYS = {"sk-test-alice-0001": "alice", "sk-test-bob-00002": "bob"}
ALICE, BOB = "sk-test-alice-0001", "sk-test-bob-00002"
PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- postgres
def _pg_tool(name: str) -> str | None:
    for d in PG_BIN_DIRS:
        if Path(d, name).is_file():
            return str(Path(d, name))
    return shutil.which(name)


class PostgresServer:
    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.data = root / "data"
        self.as_root = os.geteuid() == 0

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        full = ["runuser", "-u", "postgres", "--", *cmd] if self.as_root else list(cmd)
        return subprocess.run(full, capture_output=True, text=True, timeout=60, check=check)

    def start(self) -> None:
        initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("initdb/pg_ctl not found (install PostgreSQL 15)")
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.pg_ctl = pg_ctl
        r = self._run(
            initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", check=False
        )
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()[-300:]}")
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )
        r = self._run(
            pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start", check=False
        )
        if r.returncode:
            log = (self.root / "log").read_text()[-400:] if (self.root / "log").exists() else r.stderr
            raise RuntimeError(f"postgres did not start: {log.strip()}")

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop", check=False)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        from sqlalchemy import create_engine, text

        name = "t_" + uuid.uuid4().hex[:12]
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.execute(text(f"CREATE DATABASE {name}"))
        engine.dispose()
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    root = Path(tempfile.mkdtemp(prefix="tf-pg-"))
    server = PostgresServer(root, free_port())
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not be started here: {e}")
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    return request.getfixturevalue("postgres").create_database()


# ---------------------------------------------------------------------------------------------- settings
def service_settings(data_dir: Path, tiny_model_dir: Path, db_url: str | None = None, **overrides):
    from tuneforge.settings import Settings

    values = dict(
        data_dir=data_dir,
        database_url=db_url,
        api_keys=dict(KEYS),
        base_models={"tiny": str(tiny_model_dir)},
        heartbeat_s=0.3,
        lease_s=2.5,
        poll_s=0.2,
        control_poll_s=0.05,
        lora_learning_rate=1e-2,
        full_learning_rate=3e-3,
        max_length=64,
        max_concurrent_generations=2,
        max_queued_generations=4,
        device="cpu",
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def tiny_base(tiny_model_dir, tmp_path_factory) -> Path:
    """The conftest's tiny random model with its final norm scaled up. With the tiny random embeddings the logits
    of the unscaled model span about one nat, which LoRA (on the linear layers only) cannot widen: this copy lets
    an adapter move the loss within a few dozen steps."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-base")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(10.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture
def capitals_jsonl(tmp_path) -> Path:
    return write_jsonl(tmp_path / "capitals.jsonl", capitals_records(64))


# ------------------------------------------------------------------------------------------------ server
class LiveServer:
    """uvicorn serving create_app(settings) on 127.0.0.1 in a thread of the test process."""

    def __init__(self, settings, port: int | None = None):
        import uvicorn

        from tuneforge.serve.app import create_app

        self.app = create_app(settings)
        self.port = port or free_port()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.app.state.engine.close()
        self.app.state.db.dispose()


@contextlib.contextmanager
def live_server(settings, port: int | None = None) -> Iterator[LiveServer]:
    srv = LiveServer(settings, port).start()
    try:
        yield srv
    finally:
        srv.stop()


def client(server: LiveServer, key: str = ALICE, **kw):
    import openai

    return openai.OpenAI(base_url=server.url, api_key=key, max_retries=0, timeout=kw.pop("timeout", 60), **kw)


# ------------------------------------------------------------------------------------------------ workers
def subprocess_env(settings) -> dict[str, str]:
    from tuneforge.settings import child_env

    env = child_env(settings)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["OMP_NUM_THREADS"] = "1"
    return env


def start_worker(settings, log: Path) -> subprocess.Popen:
    """A real `tuneforge worker` process, in its own process group (so a test can SIGKILL it whole)."""
    cmd = [sys.executable, "-m", "tuneforge.cli", "worker"]
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        cmd, env=subprocess_env(settings), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def wait_for(cond: Callable[[], object], timeout: float, what: str, every: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def add_file(sessions, path: Path, owner: str = "alice") -> str:
    """A training file registered in the store as an upload would be (the worker tests need no server)."""
    from tuneforge.jobs import store
    from tuneforge.jobs.store import File

    fid = store.new_id("file")
    with store.transaction(sessions) as s:
        s.add(
            File(
                id=fid,
                owner=owner,
                filename=path.name,
                purpose="fine-tune",
                bytes=path.stat().st_size,
                path=str(path),
                created_at=int(store.now()),
            )
        )
    return fid
