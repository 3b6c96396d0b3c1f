"""The metadata store: tenants' API keys, files, fine-tuning jobs with their events and checkpoints, fine-tuned
models and their exports, and the workers that run jobs and exports. SQLAlchemy 2; SQLite by default, PostgreSQL
through DATABASE_URL.

Blobs (uploaded files, run folders) live in the data directory; rows hold their paths. Every row that belongs to
a tenant carries `owner`, and every query from the API filters on it.

Jobs are leased, never locked for their whole run: a worker takes a queued job with a compare-and-set on
`lease_token` (and `SELECT ... FOR UPDATE SKIP LOCKED` where the database has it), then renews
`lease_expires_at` with a heartbeat. A job whose lease ran out belongs to a worker that died; the next worker to
lease it resumes it from its last checkpoint. Exports are leased the same way (`lease_job(..., table=ExportJob)`);
one whose worker died is started again by the next. Times are Unix seconds from the machines' clocks.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

ACTIVE = ("validating_files", "queued", "running")  # a worker may hold these
TERMINAL = ("succeeded", "failed", "cancelled")


def now() -> float:
    return time.time()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ApiKey(Base):
    """An API key (stored as its SHA-256) and the tenant it belongs to."""

    __tablename__ = "api_keys"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    hint: Mapped[str] = mapped_column(String(16))  # "sk-a...yz", to tell keys apart in logs
    created_at: Mapped[int] = mapped_column(Integer)


class File(Base):
    __tablename__ = "files"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(255))  # the client's name, shown back; never used as a path
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)  # where the content is, chosen by the server
    status: Mapped[str] = mapped_column(String(16), default="processed")
    created_at: Mapped[int] = mapped_column(Integer)


class Job(Base):
    __tablename__ = "jobs"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(128))  # base model id
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    training_type: Mapped[str] = mapped_column(String(16), default="lora")
    method_type: Mapped[str] = mapped_column(String(16), default="supervised")  # OpenAI's method.type
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)  # as requested ("auto" allowed)
    resolved: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # after validation
    extras: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # tuneforge extensions (lora rank ...)
    grader: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # reinforcement jobs' grader
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(24), index=True)
    control: Mapped[str | None] = mapped_column(String(16), nullable=True)  # "pause" | "cancel" requests
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    failures: Mapped[list[Any]] = mapped_column(JSON, default=list)  # reasons of failed attempts
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    result_files: Mapped[list[Any]] = mapped_column(JSON, default=list)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    run_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class JobEvent(Base):
    __tablename__ = "job_events"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(8), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)  # for metrics events: de-duplication


class JobCheckpoint(Base):
    __tablename__ = "job_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step_number"),)
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class FineTunedModel(Base):
    __tablename__ = "models"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(255), unique=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    base: Mapped[str] = mapped_column(String(128))
    job_id: Mapped[str] = mapped_column(String(64))
    run_dir: Mapped[str] = mapped_column(Text)
    training_type: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(Integer)


class ExportJob(Base):
    """A fine-tuned model written in a format other runtimes load (recipes/export.py), by a worker: queued →
    running → succeeded (the files are in `out_dir`) or failed (`error`). `result` is what the export wrote to
    its export.json: files, bytes and the verification's verdict."""

    __tablename__ = "exports"
    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(255))  # the fine-tuned model's id
    format: Mapped[str] = mapped_column(String(16))  # merged | gguf | gguf-lora | ollama
    quant: Mapped[str | None] = mapped_column(String(16), nullable=True)  # GGUF type; None for merged
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # {"message", "code"}
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    out_dir: Mapped[str] = mapped_column(Text)  # chosen by the server: DATA_DIR/exports/<id>
    created_at: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class WorkerRow(Base):
    """A worker process and its last sign of life (for /health)."""

    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[int] = mapped_column(Integer)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


# ------------------------------------------------------------------------------------------------ engine
def engine_for(settings: Any) -> Engine:
    """The database engine of a server or worker, its pool sized by the settings (TUNEFORGE_DB_POOL_SIZE ...)."""
    return make_engine(
        settings.db_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
    )


def make_engine(
    url: str,
    *,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    pool_timeout: float | None = None,
) -> Engine:
    """An engine for SQLite (WAL, busy timeout: the server and the workers write concurrently) or PostgreSQL.

    Its pool keeps `pool_size` connections and opens up to `max_overflow` more under a burst; a caller that finds
    none free within `pool_timeout` s gets sqlalchemy.exc.TimeoutError (the API answers it 429 + Retry-After).
    Unset, they take the settings' defaults (TUNEFORGE_DB_POOL_SIZE, _DB_MAX_OVERFLOW, _DB_POOL_TIMEOUT_S)."""
    # Imported here, not at the top: only this function needs them.
    from sqlalchemy.engine import make_url

    from tuneforge.settings import Settings

    fields = Settings.model_fields
    pool: dict[str, Any] = {
        "pool_size": fields["db_pool_size"].default if pool_size is None else pool_size,
        "max_overflow": fields["db_max_overflow"].default if max_overflow is None else max_overflow,
        "pool_timeout": fields["db_pool_timeout_s"].default if pool_timeout is None else pool_timeout,
    }
    if url.startswith("sqlite"):
        # An in-memory database lives in one connection (SQLAlchemy gives it a pool of its own, not sizeable);
        # a file database gets a queue pool like PostgreSQL.
        if make_url(url).database in (None, "", ":memory:"):
            pool = {}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record) -> None:  # pragma: no cover - trivial
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, **pool)


def init_db(engine: Engine) -> None:
    # create_all adds the tables a database lacks (checkfirst): a database made before exports gets `exports`.
    from tuneforge.jobs import feedback  # noqa: F401  (registers the feedback loop's tables on Base)

    Base.metadata.create_all(engine)
    _add_missing_columns(engine)


# Columns added after the first release, with the value that rows written before them take (None: NULL).
ADDED_COLUMNS = {("jobs", "method_type"): "'supervised'", ("jobs", "grader"): None}


def _add_missing_columns(engine: Engine) -> None:
    """create_all makes missing tables, not missing columns: a database made by an earlier tuneforge gets
    the columns added since, so that upgrading the server keeps its jobs."""
    from sqlalchemy import inspect, text

    insp = inspect(engine)
    for (table, column), default in ADDED_COLUMNS.items():
        if column in {c["name"] for c in insp.get_columns(table)}:
            continue
        col = Base.metadata.tables[table].c[column]
        ddl = col.type.compile(dialect=engine.dialect)
        with engine.begin() as conn:
            rule = "" if default is None else f" NOT NULL DEFAULT {default}"
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}{rule}"))


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as s, s.begin():
        yield s


# -------------------------------------------------------------------------------------------------- keys
def key_hint(key: str) -> str:
    return f"{key[:4]}...{key[-2:]}"


def sync_api_keys(s: Session, keys: dict[str, str]) -> None:
    """Make the configured keys valid (adding new ones, moving a key to a new owner); keys made earlier stay."""
    for key, owner in keys.items():
        h = hash_key(key)
        row = s.scalar(select(ApiKey).where(ApiKey.key_hash == h))
        if row is None:
            s.add(ApiKey(key_hash=h, owner=owner, hint=key_hint(key), created_at=int(now())))
        elif row.owner != owner:
            row.owner = owner


def create_api_key(s: Session, owner: str) -> str:
    key = "sk-tf-" + secrets.token_urlsafe(24)
    s.add(ApiKey(key_hash=hash_key(key), owner=owner, hint=key_hint(key), created_at=int(now())))
    return key


def owner_of_key(s: Session, key: str) -> str | None:
    return s.scalar(select(ApiKey.owner).where(ApiKey.key_hash == hash_key(key)))


# ------------------------------------------------------------------------------------------- pagination
@dataclass
class Page:
    rows: list[Any]
    has_more: bool


def page(s: Session, stmt, model: type, after_pk: int | None, limit: int, newest_first: bool = True) -> Page:
    """Cursor pagination on the insertion order: `after` is the id of the last row of the previous page."""
    order = model.pk.desc() if newest_first else model.pk.asc()
    if after_pk is not None:
        stmt = stmt.where(model.pk < after_pk if newest_first else model.pk > after_pk)
    rows = list(s.scalars(stmt.order_by(order).limit(limit + 1)))
    return Page(rows[:limit], len(rows) > limit)


# ------------------------------------------------------------------------------------------------ events
def add_event(
    s: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
    step: int | None = None,
) -> JobEvent:
    ev = JobEvent(
        id=new_id("ftevent"),
        job_id=job_id,
        created_at=int(now()),
        level=level,
        type=type,
        message=message,
        data=data,
        step=step,
    )
    s.add(ev)
    return ev


# ------------------------------------------------------------------------------------------------ leases
@dataclass(frozen=True)
class Lease:
    job_id: str  # the leased row's id: a fine-tuning job's, or an export's when `table` is ExportJob
    token: str
    attempt: int
    recovered: bool  # taken over from a worker whose lease ran out
    previous_owner: str | None
    table: type[Job] | type[ExportJob] = Job


# Per leased table: the statuses a worker takes up when no one holds the row, and those a worker holds it in (a
# row held in one of them by an expired lease belongs to a dead worker).
LEASED_STATUSES = {
    "jobs": (("validating_files", "queued"), ACTIVE),
    "exports": (("queued",), ("queued", "running")),
}


def _leasable(table: type[Job] | type[ExportJob], t: float):
    waiting, held = LEASED_STATUSES[table.__tablename__]
    free = table.status.in_(waiting) & table.lease_owner.is_(None)
    expired = table.status.in_(held) & table.lease_owner.is_not(None) & (table.lease_expires_at < t)
    return or_(free, expired)


def lease_job(
    factory: sessionmaker[Session],
    worker_id: str,
    lease_s: float,
    table: type[Job] | type[ExportJob] = Job,
) -> Lease | None:
    """Take the oldest job (or export) no live worker holds, or None. Safe against any number of concurrent
    workers."""
    t = now()
    with factory() as s:
        stmt = select(table.id, table.lease_token, table.lease_owner, table.attempts).where(
            _leasable(table, t)
        )
        stmt = stmt.order_by(table.pk).limit(8).with_for_update(skip_locked=True)
        candidates = s.execute(stmt).all()
        for job_id, old_token, old_owner, attempts in candidates:
            token = uuid.uuid4().hex
            cond = [table.id == job_id, _leasable(table, t)]
            cond.append(
                table.lease_token == old_token if old_token is not None else table.lease_token.is_(None)
            )
            res = s.execute(
                update(table)
                .where(*cond)
                .values(
                    lease_owner=worker_id,
                    lease_token=token,
                    lease_expires_at=t + lease_s,
                    attempts=table.attempts + 1,
                )
            )
            if res.rowcount == 1:
                s.commit()
                return Lease(job_id, token, attempts + 1, old_owner is not None, old_owner, table)
        s.commit()
    return None


def renew_lease(factory: sessionmaker[Session], lease: Lease, lease_s: float) -> bool:
    """Extend the lease; False if it was lost (another worker took the row over, or it was deleted)."""
    table = lease.table
    with factory() as s:
        res = s.execute(
            update(table)
            .where(table.id == lease.job_id, table.lease_token == lease.token)
            .values(lease_expires_at=now() + lease_s)
        )
        s.commit()
        return res.rowcount == 1


def finish_lease(s: Session, lease: Lease, **values: Any) -> bool:
    """Write the row's new state and let go of it — only if we still hold it (a CAS on the token)."""
    table = lease.table
    values = {"lease_owner": None, "lease_token": None, "lease_expires_at": None, **values}
    res = s.execute(
        update(table).where(table.id == lease.job_id, table.lease_token == lease.token).values(**values)
    )
    return res.rowcount == 1


# ------------------------------------------------------------------------------------------- job control
# Cancel, pause and resume are compare-and-set UPDATEs on the job row: each names the state it was decided on
# (status, pending control, lease token, whether the lease is live) in its WHERE, and counts for nothing unless
# it changed exactly that row. Two requests decided on the same state cannot both win; the loser reads the row
# again and is decided anew. On PostgreSQL the row is read FOR NO KEY UPDATE, so the second try finds it
# settled; on SQLite (which ignores FOR UPDATE) the first UPDATE, matched or not, takes the database's write lock
# until commit, so the second read is the last word too. The worker's side (lifecycle.JobRun) writes through
# `holds`, `advance_run` and `finish_run`, which check its lease token and the pending control the same way.
# The tables: `control_job` (requests), `finish_run` (the worker's ends).
CONTROLS = ("cancel", "pause", "resume")
# the request's event when it changes the job at once, and when it leaves a request for the worker
_CONTROL_EVENTS = {
    ("cancel", "cancelled"): "Job cancelled",
    ("cancel", "running"): "Cancel requested",
    ("pause", "paused"): "Job paused",
    ("pause", "running"): "Pause requested",
    ("resume", "queued"): "Job resumed",
    ("resume", "running"): "Pause request withdrawn",
}
# the run's end (rows) by the control pending when the worker writes it (columns): finish_run's table
RUN_ENDS = {
    "succeeded": {None: "succeeded", "pause": "succeeded", "cancel": "cancelled"},
    "failed": {None: "failed", "pause": "failed", "cancel": "cancelled"},
    "queued": {None: "queued", "pause": "paused", "cancel": "cancelled"},
}
_NO_LEASE = {"lease_owner": None, "lease_token": None, "lease_expires_at": None}


@dataclass(frozen=True)
class ControlAnswer:
    """What a cancel / pause / resume request did. `refused`: why it was refused (the job is unchanged; the API
    answers 400); otherwise `event` is the event it wrote, None where the same request was already pending."""

    status: str
    control: str | None
    event: str | None = None
    refused: str | None = None


def control_transition(
    action: str, status: str, control: str | None, live: bool
) -> tuple[str, str | None] | str:
    """(status, control) after `action` on a job in `status` with `control` pending and a live lease or not; or,
    as a string, why the request is refused. The table above, row by row."""
    if status in TERMINAL:
        return "it was already cancelled" if status == "cancelled" else f"it has already {status}"
    if action == "cancel":
        if status == "running" and live:
            return "running", "cancel"
        return "cancelled", None
    if action == "pause":
        if status in ("validating_files", "queued"):
            return "paused", None
        if status == "paused":
            return "it is already paused"
        if control == "cancel":
            return "it is being cancelled"
        return "running", "pause"
    if status == "paused":
        return "queued", None
    if status == "running" and control == "pause":
        return "running", None
    if control == "cancel":
        return "it is being cancelled"
    return f"it is {status}; only a paused job (or one with a pause pending) can be resumed"


def control_job(s: Session, job_id: str, action: str) -> ControlAnswer:
    """Apply a cancel / pause / resume request to the job, with its event, in `s`'s transaction (the caller
    commits; on a refusal nothing was written). The caller has checked that the job is the tenant's.

    What each request does ("live": a lease whose worker still renews it; "let go": the worker that held the
    validating or queued job loses its lease, and stops at its next write):

    request  job now: status, pending control     job after: status, control        HTTP  event
    -------  -----------------------------------  --------------------------------  ----  -----------------------
    cancel   validating_files|queued|paused, any  cancelled, none (let go)          200   Job cancelled
    cancel   running, no live lease (worker died) cancelled, none (let go)          200   Job cancelled
    cancel   running, live, none|pause            running, cancel: the worker ends  200   Cancel requested
                                                  it cancelled at its next step
    cancel   running, live, cancel                unchanged                         200   —
    pause    validating_files|queued, any         paused, none (let go)             200   Job paused
    pause    running, none                        running, pause: the worker        200   Pause requested
                                                  pauses it at its next step
    pause    running, pause                       unchanged                         200   —
    pause    running, cancel                      unchanged                         400   —
    pause    paused                               unchanged                         400   —
    resume   paused                               queued, none                      200   Job resumed
    resume   running, pause                       running, none                     200   Pause request withdrawn
    resume   validating_files|queued|running,     unchanged                         400   —
             no pause pending
    any      succeeded|failed|cancelled           unchanged                         400   —

    200 answers the job as the request left it (OpenAI's job object), 400 is `invalid_job_state` in OpenAI's
    error shape. With the worker's side (`finish_run`): a cancel answered 200 ends cancelled, at once or at the
    worker's next step; nothing leaves succeeded, failed or cancelled (no request moves them, no worker holds
    them); pause and resume never undo a cancel; a paused job goes back to queued once per resume."""
    if action not in CONTROLS:
        raise ValueError(f"unknown job control {action!r}")
    for _ in range(5):
        t = now()
        row = s.execute(
            select(Job.status, Job.control, Job.lease_owner, Job.lease_token, Job.lease_expires_at)
            .where(Job.id == job_id)
            .with_for_update(key_share=True)
        ).one()
        live = row.lease_owner is not None and (row.lease_expires_at or 0.0) >= t
        to = control_transition(action, row.status, row.control, live)
        if isinstance(to, str):
            return ControlAnswer(row.status, row.control, refused=to)
        status, control = to
        if (status, control) == (row.status, row.control):
            return ControlAnswer(status, control)  # the same request is pending already
        values: dict[str, Any] = {"status": status, "control": control}
        if status in ("paused", "cancelled"):  # decided here, not by a worker: whoever held it lets go
            values.update(_NO_LEASE, estimated_finish=None)
        if status == "cancelled":
            values["finished_at"] = int(t)
        held = Job.lease_owner.is_not(None) & (Job.lease_expires_at >= t)
        same = [
            Job.id == job_id,
            Job.status == row.status,
            Job.control.is_not_distinct_from(row.control),
            Job.lease_token.is_not_distinct_from(row.lease_token),
            held if live else ~held,
        ]
        if s.execute(update(Job).where(*same).values(**values)).rowcount == 1:
            event = _CONTROL_EVENTS[action, status]
            add_event(s, job_id, event)
            return ControlAnswer(status, control, event)
    raise RuntimeError(f"job {job_id} kept changing under a {action} request")


def holds(s: Session, lease: Lease) -> bool:
    """Whether the worker still holds the job, with its row locked until `s` commits (a no-op UPDATE on the
    token): what the worker writes in this transaction cannot land after a request took the job from it."""
    res = s.execute(
        update(Job)
        .where(Job.id == lease.job_id, Job.lease_token == lease.token)
        .values(lease_token=Job.lease_token)
    )
    return res.rowcount == 1


def advance_run(
    s: Session, lease: Lease, status: str, from_statuses: tuple[str, ...], **values: Any
) -> str | None:
    """The worker's step forward (validating_files → queued, queued → running), made only while it holds the
    lease and no control is pending. None once made; otherwise why not: "lost" (the job is no longer this
    lease's: another worker or a request took it) or the pending control, which the caller ends the run with."""
    for _ in range(5):
        res = s.execute(
            update(Job)
            .where(
                Job.id == lease.job_id,
                Job.lease_token == lease.token,
                Job.status.in_(from_statuses),
                Job.control.is_(None),
            )
            .values(status=status, **values)
        )
        if res.rowcount == 1:
            return None
        row = s.execute(
            select(Job.status, Job.control, Job.lease_token)
            .where(Job.id == lease.job_id)
            .with_for_update(key_share=True)
        ).one_or_none()
        if row is None or row.lease_token != lease.token:
            return "lost"
        if row.control is not None:
            return row.control
        if row.status not in from_statuses:  # still ours, yet not where the worker thought: a bug, not a race
            raise RuntimeError(f"job {lease.job_id} is {row.status}, not {' or '.join(from_statuses)}")
    raise RuntimeError(f"job {lease.job_id} kept changing under its worker")


def finish_run(
    s: Session,
    lease: Lease,
    outcome: str,
    values: dict[str, Any] | None = None,
    always: dict[str, Any] | None = None,
) -> str | None:
    """End the worker's run of a job as `outcome` ("succeeded", "failed" or "queued"), or as the pending control
    turns it, and let go of the lease; the status written, or None if the lease is no longer this worker's
    (nothing written). `values` are written only if the job ends as `outcome`, `always` in any case.

    the run ends as                                  control none  control pause  control cancel
    -----------------------------------------------  ------------  -------------  --------------
    succeeded                                        succeeded     succeeded      cancelled
    failed                                           failed        failed         cancelled
    queued (a crash to retry, the worker stopping,   queued        paused         cancelled
            the loop stopped on request)

    A pending cancel always wins (also over a run that finished before its loop saw the request); a pending
    pause wins over going back to the queue, not over the end."""
    for _ in range(5):
        row = s.execute(
            select(Job.control, Job.lease_token).where(Job.id == lease.job_id).with_for_update(key_share=True)
        ).one_or_none()
        if row is None or row.lease_token is None or row.lease_token != lease.token:
            return None
        status = RUN_ENDS[outcome][row.control]
        new = dict(values or {}) if status == outcome else {}
        new.update(always or {})
        new.update(_NO_LEASE, status=status, control=None, estimated_finish=None)
        if status in TERMINAL:
            new.setdefault("finished_at", int(now()))
        res = s.execute(
            update(Job)
            .where(
                Job.id == lease.job_id,
                Job.lease_token == lease.token,
                Job.control.is_not_distinct_from(row.control),
            )
            .values(**new)
        )
        if res.rowcount == 1:
            return status
    raise RuntimeError(f"job {lease.job_id} kept changing under its worker")


def heartbeat_worker(s: Session, worker_id: str, host: str, pid: int, job_id: str | None) -> None:
    row = s.get(WorkerRow, worker_id)
    if row is None:
        s.add(
            WorkerRow(
                id=worker_id, host=host, pid=pid, started_at=int(now()), heartbeat_at=now(), job_id=job_id
            )
        )
    else:
        row.heartbeat_at = now()
        row.job_id = job_id


def live_workers(s: Session, within_s: float) -> Sequence[WorkerRow]:
    return list(s.scalars(select(WorkerRow).where(WorkerRow.heartbeat_at >= now() - within_s)))
