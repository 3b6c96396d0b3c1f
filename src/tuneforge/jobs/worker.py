"""The worker: leases queued jobs from the database and runs them through `tuneforge.api.finetune`.

One job at a time per worker; start several workers (`tuneforge worker`, or `tuneforge serve --workers N`) for
several jobs at once. The life of a job:

  validating_files → (files read and checked with OpenAI's rules) → queued → running → succeeded
                                                                             ↘ paused ↔ queued, cancelled, failed
While it holds a job, the worker renews the job's lease every `heartbeat_s` from a background thread. If the
worker dies (kill -9, power loss), the lease runs out after `lease_s`, another worker leases the job and resumes it
from its last complete checkpoint (`finetune(cfg, resume=True)`), which ends exactly where an uninterrupted run
ends. A job that crashed or lost its worker `max_attempts` times fails with every
reason recorded. Pause and cancel are flags in the job row, read by the training loop's `should_stop` hook; the loop
then writes a checkpoint and returns, and the worker records the new status.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.errors import ConfigError, DataError, ModelError, TuneforgeError
from tuneforge.jobs import recipe, store
from tuneforge.jobs.checks import JobError, check_file, check_method_fits
from tuneforge.jobs.store import FineTunedModel, Job, JobCheckpoint, JobEvent, Lease
from tuneforge.methods import registry
from tuneforge.settings import Settings

log = logging.getLogger("tuneforge.worker")


def fine_tuned_model_id(base: str, owner: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's naming: ft:{base}:{owner}:{suffix}:{id} (suffix may be empty)."""
    return f"ft:{base}:{owner}:{suffix or ''}:{job_id.removeprefix('ftjob-')}"


class LostLease(Exception):
    """Another worker took the job over: this one must stop touching it."""


class Worker:
    def __init__(self, settings: Settings, worker_id: str | None = None):
        self.settings = settings
        self.id = worker_id or f"worker-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        settings.ensure_dirs()
        self.engine = store.make_engine(settings.db_url)
        store.init_db(self.engine)
        self.sessions: sessionmaker[Session] = store.session_factory(self.engine)
        self._stop = threading.Event()

    # ------------------------------------------------------------------------------------------ main loop
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
        self._stop.set()

    def run_one(self) -> bool:
        lease = store.lease_job(self.sessions, self.id, self.settings.lease_s)
        if lease is None:
            return False
        self.process(lease)
        return True

    def _beat(self, job_id: str | None) -> None:
        with store.transaction(self.sessions) as s:
            store.heartbeat_worker(s, self.id, socket.gethostname(), os.getpid(), job_id)

    # ------------------------------------------------------------------------------------------ one job
    def process(self, lease: Lease) -> None:
        beat = _Heartbeat(self, lease)
        beat.start()
        try:
            self._process(lease, beat)
        except LostLease:
            log.warning("job %s was taken over by another worker; %s lets go of it", lease.job_id, self.id)
        except JobError as e:
            self._fail(lease, e.as_dict())
        except TuneforgeError as e:
            self._fail(lease, {"code": _error_code(e), "message": str(e), "param": None})
        except Exception as e:  # a crash: another attempt may succeed (out of memory, a full disk ...)
            log.exception("job %s crashed", lease.job_id)
            self._crashed(lease, f"{type(e).__name__}: {e}", traceback.format_exc(limit=3))
        finally:
            beat.stop()
            self._beat(None)

    def _process(self, lease: Lease, beat: _Heartbeat) -> None:
        s = self.settings
        if lease.recovered:
            with store.transaction(self.sessions) as db:
                job = db.get_one(Job, _pk(db, lease.job_id))
                reason = (
                    f"worker {lease.previous_owner} stopped renewing its lease (attempt {lease.attempt - 1})"
                )
                job.failures = [*job.failures, reason]
                store.add_event(db, job.id, f"{reason}; resuming from the last checkpoint", level="warn")
        with store.transaction(self.sessions) as db:
            job = db.get_one(Job, _pk(db, lease.job_id))
            if len(job.failures) >= s.max_attempts:
                reasons = "; ".join(job.failures[-s.max_attempts :])
                raise JobError(
                    "max_attempts_exceeded",
                    f"the job failed {len(job.failures)} times and was given up: {reasons}",
                )
            if job.control == "cancel":
                self._finish(db, lease, job, "cancelled", "Job cancelled")
                return
            if job.control == "pause":
                self._finish(db, lease, job, "paused", "Job paused")
                return
            if job.run_dir is None:
                job.run_dir = str(s.runs_dir / job.id)
            snapshot = _JobView.of(job)
        run_dir = Path(snapshot.run_dir)

        if snapshot.resolved is None:
            resolved = self._validate(lease, snapshot)
        else:
            resolved = snapshot.resolved
        files = self._file_paths(snapshot)
        cfg = recipe.run_config(
            run_dir=run_dir,
            base_source=self._base_source(snapshot.model),
            train_path=files[0],
            validation_path=files[1],
            training_type=snapshot.training_type,
            method_type=snapshot.method_type,
            resolved=resolved,
            extras=snapshot.extras,
            seed=snapshot.seed,
            base_learning_rate=s.lora_learning_rate
            if registry.get(snapshot.training_type).artifact == "adapter"
            else s.full_learning_rate,
            max_length=int(snapshot.extras.get("max_length") or s.max_length),
        )
        resume = (run_dir / "config.yaml").is_file()
        with store.transaction(self.sessions) as db:
            job = db.get_one(Job, _pk(db, lease.job_id))
            self._check_lease(db, lease)
            job.status = "running"
            job.started_at = job.started_at or int(store.now())
            msg = "Fine-tuning job started" if not resume else "Fine-tuning job resumed"
            store.add_event(db, job.id, f"{msg} (attempt {lease.attempt}, {self.id})")

        from tuneforge import api

        events = _EventSink(self, lease, beat)
        summary = api.finetune(
            cfg,
            resume=resume,
            overwrite=not resume,
            evaluate=False,
            on_event=events,
            should_stop=events.should_stop,
            device=s.device,
            show=False,
        )
        if beat.lost.is_set():
            raise LostLease()
        train = summary["train"]
        with store.transaction(self.sessions) as db:
            job = db.get_one(Job, _pk(db, lease.job_id))
            if train.get("stopped_by_request"):
                control = job.control
                if control == "cancel":
                    self._finish(db, lease, job, "cancelled", "Job cancelled")
                elif control == "pause":
                    self._finish(db, lease, job, "paused", f"Job paused at step {job.step}")
                else:  # this worker is shutting down: another one continues from the checkpoint just written
                    self._finish(
                        db,
                        lease,
                        job,
                        "queued",
                        f"Worker {self.id} stopped; job re-queued at step {job.step}",
                    )
                return
            result_file = self._results_file(db, job, run_dir)
            model_id = fine_tuned_model_id(job.model, job.owner, job.suffix, job.id)
            if db.scalar(select(FineTunedModel).where(FineTunedModel.id == model_id)) is None:
                db.add(
                    FineTunedModel(
                        id=model_id,
                        owner=job.owner,
                        base=job.model,
                        job_id=job.id,
                        run_dir=str(run_dir),
                        training_type=job.training_type,
                        created_at=int(store.now()),
                    )
                )
            store.add_event(db, job.id, f"New fine-tuned model created: {model_id}")
            store.add_event(db, job.id, "The job has successfully completed")
            ok = store.finish_lease(
                db,
                lease,
                status="succeeded",
                fine_tuned_model=model_id,
                result_files=[result_file],
                trained_tokens=int(train.get("tokens_seen") or 0),
                step=int(train.get("steps") or job.step),
                finished_at=int(store.now()),
                estimated_finish=None,
                control=None,
            )
            if not ok:
                raise LostLease()

    # ------------------------------------------------------------------------------------ validating_files
    def _validate(self, lease: Lease, job: _JobView) -> dict[str, Any]:
        self._event(lease, f"Validating training file: {job.training_file}")
        train_path, val_path = self._file_paths(job)
        labels = self._file_labels(job)
        checked = check_file(train_path, "training_file", labels[0], self.settings.min_examples)
        check_method_fits(checked, job.method_type, "training_file", labels[0])
        n_val = None
        if val_path is not None:
            self._event(lease, f"Validating validation file: {job.validation_file}")
            checked_val = check_file(val_path, "validation_file", labels[1], 1)
            check_method_fits(checked_val, job.method_type, "validation_file", labels[1])
            n_val = len(checked_val.examples)
        resolved = recipe.resolve(job.hyperparameters, len(checked.examples))
        with store.transaction(self.sessions) as db:
            self._check_lease(db, lease)
            row = db.get_one(Job, _pk(db, lease.job_id))
            row.resolved = resolved
            row.status = "queued"
            counts = f"{len(checked.examples)} training examples" + (
                f", {n_val} validation examples" if n_val is not None else ""
            )
            store.add_event(
                db, row.id, f"Files validated ({counts}, format {checked.format}), moving job to queued state"
            )
            if checked.warnings:
                first = checked.warnings[0]
                store.add_event(
                    db,
                    row.id,
                    f"{len(checked.warnings)} warning(s) in the training file, e.g. {first.code}: {first.message}",
                    level="warn",
                )
        return resolved

    def _file_paths(self, job: _JobView) -> tuple[Path, Path | None]:
        with self.sessions() as db:
            out: list[Path | None] = []
            for param, fid in (
                ("training_file", job.training_file),
                ("validation_file", job.validation_file),
            ):
                if fid is None:
                    out.append(None)
                    continue
                f = db.scalar(select(store.File).where(store.File.id == fid, store.File.owner == job.owner))
                if f is None or not Path(f.path).is_file():
                    raise JobError(
                        "file_not_found", f"file {fid} was deleted before the job could use it", param
                    )
                out.append(Path(f.path))
        return out[0], out[1]  # type: ignore[return-value]

    def _file_labels(self, job: _JobView) -> tuple[str, str]:
        with self.sessions() as db:
            names = dict(
                db.execute(
                    select(store.File.id, store.File.filename).where(
                        store.File.id.in_([x for x in (job.training_file, job.validation_file) if x])
                    )
                ).all()
            )
        label = "training file {} ({})"
        return (
            label.format(job.training_file, names.get(job.training_file, "?")),
            "validation file {} ({})".format(job.validation_file, names.get(job.validation_file, "?")),
        )

    def _base_source(self, model: str) -> str:
        source = self.settings.base_models.get(model)
        if source is None:
            raise JobError(
                "model_not_available", f"base model {model!r} is no longer offered by this server", "model"
            )
        return source

    # ------------------------------------------------------------------------------------- end of a job
    def _finish(self, db: Session, lease: Lease, job: Job, status: str, message: str) -> None:
        values: dict[str, Any] = {"status": status, "control": None}
        if status in store.TERMINAL:
            values["finished_at"] = int(store.now())
        store.add_event(db, job.id, message)
        if not store.finish_lease(db, lease, **values):
            raise LostLease()

    def _fail(self, lease: Lease, error: dict[str, Any]) -> None:
        with store.transaction(self.sessions) as db:
            store.add_event(db, lease.job_id, f"Job failed: {error['message']}", level="error")
            store.finish_lease(
                db, lease, status="failed", error=error, finished_at=int(store.now()), control=None
            )

    def _crashed(self, lease: Lease, reason: str, trace: str) -> None:
        with store.transaction(self.sessions) as db:
            job = db.get_one(Job, _pk(db, lease.job_id))
            job_failures = [*job.failures, f"attempt {lease.attempt}: {reason}"]
            if len(job_failures) >= self.settings.max_attempts:
                error = {
                    "code": "training_failed",
                    "message": f"the job failed {len(job_failures)} times: " + "; ".join(job_failures),
                    "param": None,
                }
                store.add_event(db, job.id, f"Job failed: {reason}", level="error", data={"traceback": trace})
                store.finish_lease(
                    db,
                    lease,
                    status="failed",
                    error=error,
                    failures=job_failures,
                    finished_at=int(store.now()),
                    control=None,
                )
            else:
                store.add_event(
                    db,
                    job.id,
                    f"Attempt {lease.attempt} failed ({reason}); the job goes back to the queue",
                    level="warn",
                    data={"traceback": trace},
                )
                store.finish_lease(db, lease, status="queued", failures=job_failures)

    def _results_file(self, db: Session, job: Job, run_dir: Path) -> str:
        """metrics.jsonl as OpenAI's results CSV (step, train_loss, train_accuracy, valid_loss,
        valid_mean_token_accuracy), stored as a file with purpose fine-tune-results."""
        from tuneforge.rundir import RunDir

        rows: dict[int, dict[str, Any]] = {}
        for r in RunDir(run_dir).read_metrics():
            row = rows.setdefault(int(r["step"]), {"step": int(r["step"])})
            if "loss" in r:
                row.update(train_loss=r["loss"], train_accuracy=r.get("token_accuracy"))
            if "val_loss" in r:
                row.update(valid_loss=r["val_loss"], valid_mean_token_accuracy=r.get("val_token_accuracy"))
        cols = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for step in sorted(rows):
            w.writerow({c: rows[step].get(c, "") for c in cols})
        data = buf.getvalue().encode()
        file_id = store.new_id("file")
        path = self.settings.files_dir / file_id
        path.write_bytes(data)
        db.add(
            store.File(
                id=file_id,
                owner=job.owner,
                filename="step_metrics.csv",
                purpose="fine-tune-results",
                bytes=len(data),
                path=str(path),
                created_at=int(store.now()),
            )
        )
        return file_id

    # ------------------------------------------------------------------------------------------- helpers
    def _event(self, lease: Lease, message: str, **kw: Any) -> None:
        with store.transaction(self.sessions) as db:
            store.add_event(db, lease.job_id, message, **kw)

    def _check_lease(self, db: Session, lease: Lease) -> None:
        token = db.scalar(select(Job.lease_token).where(Job.id == lease.job_id))
        if token != lease.token:
            raise LostLease()


def _pk(db: Session, job_id: str) -> int:
    return db.scalar(select(Job.pk).where(Job.id == job_id))


def _error_code(e: TuneforgeError) -> str:
    if isinstance(e, DataError):
        return "invalid_training_data"
    if isinstance(e, ConfigError):
        return "invalid_hyperparameters"
    if isinstance(e, ModelError):
        return "model_error"
    return "job_error"


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class _JobView:
    """The fields of a job row the worker needs outside a session."""

    @classmethod
    def of(cls, job: Job) -> _JobView:
        v = cls()
        for k in (
            "id",
            "owner",
            "model",
            "training_file",
            "validation_file",
            "suffix",
            "seed",
            "training_type",
            "method_type",
            "hyperparameters",
            "resolved",
            "extras",
            "run_dir",
        ):
            setattr(v, k, getattr(job, k))
        v.extras = dict(v.extras or {})
        return v


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


class _EventSink:
    """Receives the training loop's events and writes them as job events, checkpoints and progress."""

    def __init__(self, worker: Worker, lease: Lease, beat: _Heartbeat):
        self.worker, self.lease, self.beat = worker, lease, beat
        self.total_steps: int | None = None
        self.t0 = time.time()
        self.start_step: int | None = None
        self._last_train: dict[str, Any] = {}
        self._last_val: dict[str, Any] = {}
        self._checked = 0.0
        self._stop = False
        with worker.sessions() as db:
            seen = db.execute(
                select(JobEvent.step, JobEvent.data).where(
                    JobEvent.job_id == lease.job_id, JobEvent.type == "metrics"
                )
            ).all()
        # After a resume the loop replays the steps since the last checkpoint with the same values: keep one.
        self._seen = {(step, "valid_loss" in (data or {})) for step, data in seen}

    def __call__(self, kind: str, payload: dict[str, Any]) -> None:
        if self.beat.lost.is_set():
            return
        sessions = self.worker.sessions
        if kind == "message":
            m = payload.get("message", "")
            total = payload.get("total_steps")
            with store.transaction(sessions) as db:
                if total is not None:
                    self.total_steps = total
                    db.get_one(Job, _pk(db, self.lease.job_id)).total_steps = total
                store.add_event(db, self.lease.job_id, m)
        elif kind == "metrics":
            self._metrics(payload)
        elif kind == "checkpoint":
            self._checkpoint(payload)

    def _metrics(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        is_val = "val_loss" in row
        if is_val:
            self._last_val = row
            data = {
                "step": step,
                "valid_loss": row["val_loss"],
                "valid_mean_token_accuracy": row.get("val_token_accuracy"),
                "full_valid_loss": row["val_loss"],
                "full_valid_mean_token_accuracy": row.get("val_token_accuracy"),
                "valid_perplexity": row.get("val_ppl"),
            }
            if self._last_train.get("step") == step:
                data["train_loss"] = self._last_train["loss"]
                data["train_mean_token_accuracy"] = self._last_train.get("token_accuracy")
            msg = f"Step {step}: validation loss={row['val_loss']:.4f}"
        else:
            self._last_train = row
            data = {
                "step": step,
                "train_loss": row["loss"],
                "train_mean_token_accuracy": row.get("token_accuracy"),
                "epoch": row.get("epoch"),
                "learning_rate": row.get("lr"),
                "tokens_per_second": row.get("tokens_per_s"),
            }
            msg = f"Step {step}" + (f"/{self.total_steps}" if self.total_steps else "")
            msg += f": training loss={row['loss']:.4f}"
        for key in ("reward_accuracy", "reward_margin"):  # preference jobs (dpo): how often chosen wins
            if (value := row.get(f"val_{key}" if is_val else key)) is not None:
                data[f"valid_{key}" if is_val else f"train_{key}"] = value
        if self.total_steps:
            data["total_steps"] = self.total_steps
        if self.start_step is None:
            self.start_step = step - 1
            self.t0 = time.time()
        with store.transaction(self.worker.sessions) as db:
            job = db.get_one(Job, _pk(db, self.lease.job_id))
            job.step = max(job.step or 0, step)
            if self.total_steps and step > self.start_step:
                rate = (time.time() - self.t0) / (step - self.start_step)
                job.estimated_finish = int(time.time() + rate * (self.total_steps - step))
            if (step, is_val) not in self._seen:
                self._seen.add((step, is_val))
                store.add_event(db, job.id, msg, type="metrics", data=data, step=step)

    def _checkpoint(self, payload: dict[str, Any]) -> None:
        step = int(payload["step"])
        t, v = self._last_train, self._last_val
        metrics = {"step": step}
        if t and t.get("step", 0) <= step:
            metrics.update(train_loss=t["loss"], train_mean_token_accuracy=t.get("token_accuracy"))
        if v and v.get("step", 0) <= step:
            metrics.update(
                valid_loss=v["val_loss"],
                valid_mean_token_accuracy=v.get("val_token_accuracy"),
                full_valid_loss=v["val_loss"],
                full_valid_mean_token_accuracy=v.get("val_token_accuracy"),
            )
        with store.transaction(self.worker.sessions) as db:
            row = db.scalar(
                select(JobCheckpoint).where(
                    JobCheckpoint.job_id == self.lease.job_id, JobCheckpoint.step_number == step
                )
            )
            if row is None:
                db.add(
                    JobCheckpoint(
                        id=store.new_id("ftckpt"),
                        job_id=self.lease.job_id,
                        step_number=step,
                        created_at=int(store.now()),
                        path=str(payload["path"]),
                        metrics=metrics,
                    )
                )
                store.add_event(db, self.lease.job_id, f"Checkpoint created at step {step}")
            else:
                row.path, row.metrics = str(payload["path"]), metrics

    def should_stop(self) -> bool:
        if self.beat.lost.is_set() or self.worker._stop.is_set():
            return True
        t = time.monotonic()
        if t - self._checked >= self.worker.settings.control_poll_s:
            self._checked = t
            with self.worker.sessions() as db:
                control = db.scalar(select(Job.control).where(Job.id == self.lease.job_id))
            self._stop = control in ("pause", "cancel")
        return self._stop
