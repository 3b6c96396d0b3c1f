"""The life of one leased job: `JobRun` takes it from the state the worker found it in to its next one
(validating its files, training it, recording how it ended), and `_EventSink` turns the training loop's events
into the job's events, checkpoints and progress.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.config import RunConfig
from tuneforge.data.prepare import read_split
from tuneforge.errors import ConfigError, DataError, ModelError, TuneforgeError
from tuneforge.jobs import openai, store
from tuneforge.jobs.checks import JobError, check_for_method, reinforcement_rows
from tuneforge.jobs.store import FineTunedModel, Job, JobCheckpoint, JobEvent, Lease
from tuneforge.rundir import RunDir
from tuneforge.settings import Settings

log = logging.getLogger("tuneforge.worker")


class LostLease(Exception):
    """Another worker took the job over: this one must stop touching it."""


class JobRun:
    """One job, from the lease a worker took on it to the job's next state:

      validating_files → (files read and checked with OpenAI's rules) → queued → running → succeeded
                                                                                 ↘ paused ↔ queued, cancelled, failed

    A job whose previous worker stopped renewing its lease resumes from its last complete checkpoint
    (`finetune(cfg, resume=True)`), which ends exactly where an uninterrupted run ends. A job that crashed or
    lost its worker `max_attempts` times fails with every reason recorded. Pause and cancel of a running job are
    requests in the job row's `control`, read by the training loop's `should_stop` hook; the loop then writes a
    checkpoint and returns, and the new status is recorded here. Every status this class writes goes through
    `store.advance_run` (a step forward, only while no control is pending) or `store.finish_run` (the run's end,
    which a pending cancel always turns into cancelled): compare-and-set UPDATEs on the lease token and the
    control, so that a request answered 200 is never written over (the table is in store.py, "job control").
    `lost` is set by the worker's heartbeat when the lease is gone, `stopping` when the worker shuts down (the job
    then goes back to the queue).
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        worker_id: str,
        lease: Lease,
        lost: threading.Event,
        stopping: threading.Event,
    ):
        self.settings, self.sessions, self.worker_id, self.lease = settings, sessions, worker_id, lease
        self.lost, self.stopping = lost, stopping

    def run(self) -> None:
        """Take the job to its next state; a failure becomes the job's error, a crash another attempt."""
        try:
            self._run()
        except LostLease:
            log.warning(
                "job %s is no longer %s's (taken over by another worker, or paused or cancelled while it waited); "
                "it lets go of it",
                self.lease.job_id,
                self.worker_id,
            )
        except JobError as e:
            self._fail(e.as_dict())
        except TuneforgeError as e:
            self._fail({"code": _error_code(e), "message": str(e), "param": None})
        except Exception as e:  # a crash: another attempt may succeed (out of memory, a full disk ...)
            log.exception("job %s crashed", self.lease.job_id)
            self._crashed(f"{type(e).__name__}: {e}", traceback.format_exc(limit=3))

    def _run(self) -> None:
        if self.lease.recovered:
            self._record_lost_lease()
        job = self._take_up()
        if job is None:
            return
        resolved = self._validate(job) if job.resolved is None else job.resolved
        if resolved is None:
            return
        cfg = self._run_config(job, resolved)
        run_dir = Path(job.run_dir)
        resume = RunDir(run_dir).config.is_file()
        if not self._mark_running(resume):
            return
        summary = self._train(cfg, resume)
        if self.lost.is_set():
            raise LostLease()
        with store.transaction(self.sessions) as db:
            row = db.get_one(Job, _pk(db, self.lease.job_id))
            if summary["train"].get("stopped_by_request"):
                self._stopped(db, row)
            else:
                if summary.get("report"):
                    store.add_event(db, row.id, _report_note(summary["report"], row.id))
                self._succeeded(db, row, run_dir, summary["train"])

    # ---------------------------------------------------------------------------------------- before training
    def _record_lost_lease(self) -> None:
        """The previous worker died holding the job: that counts as a failed attempt."""
        lease = self.lease
        with store.transaction(self.sessions) as db:
            self._hold(db)
            job = db.get_one(Job, _pk(db, lease.job_id))
            reason = f"worker {lease.previous_owner} stopped renewing its lease (attempt {lease.attempt - 1})"
            job.failures = [*job.failures, reason]
            store.add_event(db, job.id, f"{reason}; resuming from the last checkpoint", level="warn")

    def _take_up(self) -> _JobView | None:
        """The job as it stands, or None if a pause or cancel is pending (left by a worker that died while it ran
        the job; the run is then ended as the control says)."""
        s = self.settings
        with store.transaction(self.sessions) as db:
            self._hold(db)
            job = db.get_one(Job, _pk(db, self.lease.job_id))
            if len(job.failures) >= s.max_attempts:
                reasons = "; ".join(job.failures[-s.max_attempts :])
                raise JobError(
                    "max_attempts_exceeded",
                    f"the job failed {len(job.failures)} times and was given up: {reasons}",
                )
            if job.control is not None:
                self._end(db, "queued")
                return None
            if job.run_dir is None:
                job.run_dir = str(s.runs_dir / job.id)
            return _JobView.of(job)

    def _validate(self, job: _JobView) -> dict[str, Any] | None:
        """validating_files → queued: OpenAI's checks on the files, then the "auto" hyperparameters resolved.
        None if a control came meanwhile (the run is then ended as it says)."""
        self._event(f"Validating training file: {job.training_file}")
        train_path, val_path = self._training_paths(job)
        labels = self._file_labels(job)
        checked = check_for_method(
            train_path, "training_file", labels[0], job.method_type, self.settings.min_examples
        )
        n_val = None
        if val_path is not None:
            self._event(f"Validating validation file: {job.validation_file}")
            checked_val = check_for_method(val_path, "validation_file", labels[1], job.method_type, 1)
            n_val = len(checked_val.examples)
        resolved = openai.resolve(job.hyperparameters, len(checked.examples))
        with store.transaction(self.sessions) as db:
            # queued already if it was paused before its files were checked, and then resumed
            if not self._advance(db, "queued", ("validating_files", "queued"), resolved=resolved):
                return None
            counts = f"{len(checked.examples)} training examples" + (
                f", {n_val} validation examples" if n_val is not None else ""
            )
            store.add_event(
                db, job.id, f"Files validated ({counts}, format {checked.format}), moving job to queued state"
            )
            if note := _split_note(job, val_path is not None):
                store.add_event(db, job.id, note[0], level=note[1])
            if checked.warnings:
                first = checked.warnings[0]
                store.add_event(
                    db,
                    job.id,
                    f"{len(checked.warnings)} warning(s) in the training file, e.g. {first.code}: {first.message}",
                    level="warn",
                )
        return resolved

    def _training_paths(self, job: _JobView) -> tuple[Path, Path | None]:
        """The files the run reads: the uploads, or for a reinforcement job their rows with the grader's reference
        as the answer (written beside the uploads, so that the run folder holds only the run)."""
        train, val = self._file_paths(job)
        if job.method_type != "reinforcement":
            return train, val
        labels = self._file_labels(job)
        rows = self.settings.files_dir
        train = reinforcement_rows(
            train, "training_file", labels[0], job.grader, rows / f"{job.id}-train.jsonl"
        )
        if val is not None:
            val = reinforcement_rows(
                val, "validation_file", labels[1], job.grader, rows / f"{job.id}-val.jsonl"
            )
        return train, val

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

    def _run_config(self, job: _JobView, resolved: dict[str, Any]) -> RunConfig:
        # looked up again: a job validated in an earlier attempt skips _validate, and a file may be gone since
        train_path, validation_path = self._training_paths(job)
        return openai.job_run_config(
            self.settings,
            run_dir=Path(job.run_dir),
            base_source=self._base_source(job.model),
            train_path=train_path,
            validation_path=validation_path,
            training_type=job.training_type,
            method_type=job.method_type,
            resolved=resolved,
            requested=job.hyperparameters,
            extras=job.extras,
            seed=job.seed,
            grader=job.grader,
        )

    def _base_source(self, model: str) -> str:
        source = self.settings.base_models.get(model)
        if source is None:
            raise JobError(
                "model_not_available", f"base model {model!r} is no longer offered by this server", "model"
            )
        return source

    # ------------------------------------------------------------------------------------------------ training
    def _mark_running(self, resume: bool) -> bool:
        """queued → running (running already for a job taken over from a dead worker); False if a control came
        first (the run is then ended as it says)."""
        with store.transaction(self.sessions) as db:
            started = func.coalesce(Job.started_at, int(store.now()))
            if not self._advance(db, "running", ("queued", "running"), started_at=started):
                return False
            msg = "Fine-tuning job started" if not resume else "Fine-tuning job resumed"
            store.add_event(db, self.lease.job_id, f"{msg} (attempt {self.lease.attempt}, {self.worker_id})")
        return True

    def _train(self, cfg: RunConfig, resume: bool) -> dict[str, Any]:
        # Imported here: the recipes (and torch behind them) load when a job first trains, not whenever a worker
        # starts.
        from tuneforge.recipes.run import finetune

        events = _EventSink(self, cfg)
        return finetune(
            cfg,
            resume=resume,
            overwrite=not resume,
            evaluate=cfg.data.split.test > 0,  # the before/after report, where the job held out a test split
            on_event=events,
            should_stop=events.should_stop,
            device=self.settings.device,
            show=False,
        )

    # ---------------------------------------------------------------------------------------------- end states
    def _stopped(self, db: Session, job: Job) -> None:
        """The loop stopped on request: the job's control says why (paused, cancelled), or else this worker is
        shutting down (or the pause was withdrawn) and the job goes back to the queue, where a worker continues
        from the checkpoint just written."""
        if self._end(db, "queued") is None:
            raise LostLease()

    def _succeeded(self, db: Session, job: Job, run_dir: Path, train: dict[str, Any]) -> None:
        """The run finished: the job succeeded with its fine-tuned model — unless a cancel came first, which wins
        (then no model and no results file)."""
        # The results CSV first: OpenAI's clients read result_files[0]; the held-out split, if any, follows.
        results_id = store.new_id("file")
        model_id = openai.fine_tuned_model_id(job.model, job.owner, job.suffix, job.id)
        values = dict(
            fine_tuned_model=model_id,
            result_files=[results_id, *(job.result_files or [])],
            trained_tokens=int(train.get("tokens_seen") or 0),
            step=int(train.get("steps") or job.step),
        )
        final = self._end(db, "succeeded", values=values)
        if final is None:
            raise LostLease()
        if final != "succeeded":
            return
        self._results_file(db, job, run_dir, results_id)
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

    def _results_file(self, db: Session, job: Job, run_dir: Path, file_id: str) -> str:
        """The run's metrics.jsonl as OpenAI's results CSV, stored as a file with purpose fine-tune-results."""
        return self.result_file(
            db, job.owner, "step_metrics.csv", openai.results_csv(RunDir(run_dir).read_metrics()), file_id
        )

    def result_file(
        self, db: Session, owner: str, filename: str, data: bytes, file_id: str | None = None
    ) -> str:
        """`data` stored as a file of the job's owner with purpose fine-tune-results; its id."""
        file_id = file_id or store.new_id("file")
        path = self.settings.files_dir / file_id
        path.write_bytes(data)
        db.add(
            store.File(
                id=file_id,
                owner=owner,
                filename=filename,
                purpose="fine-tune-results",
                bytes=len(data),
                path=str(path),
                created_at=int(store.now()),
            )
        )
        return file_id

    def _advance(self, db: Session, status: str, from_statuses: tuple[str, ...], **values: Any) -> bool:
        """A step forward (store.advance_run); False if a pending control ended the run instead."""
        why = store.advance_run(db, self.lease, status, from_statuses, **values)
        if why == "lost":
            raise LostLease()
        if why is not None:
            self._end(db, "queued")
            return False
        return True

    def _end(
        self,
        db: Session,
        outcome: str,
        message: str | None = None,
        values: dict[str, Any] | None = None,
        always: dict[str, Any] | None = None,
        **event: Any,
    ) -> str | None:
        """End the run as `outcome` or as the pending control turns it (store.finish_run), with the event of the
        state it ended in: `message` if it is `outcome`'s. The status written; None if the lease is gone (nothing
        written)."""
        final = store.finish_run(db, self.lease, outcome, values, always)
        if final is None:
            return None
        if final == outcome and message is not None:
            store.add_event(db, self.lease.job_id, message, **event)
        elif (text := _END_EVENTS.get(final)) is not None:
            step = db.scalar(select(Job.step).where(Job.id == self.lease.job_id))
            store.add_event(db, self.lease.job_id, text.format(step=step, worker=self.worker_id))
        return final

    def _fail(self, error: dict[str, Any]) -> None:
        with store.transaction(self.sessions) as db:
            message = f"Job failed: {error['message']}"
            if self._end(db, "failed", message, values={"error": error}, level="error") is None:
                log.warning("job %s failed after %s lost its lease", self.lease.job_id, self.worker_id)

    def _crashed(self, reason: str, trace: str) -> None:
        """Back to the queue for another attempt, or failed once `max_attempts` attempts have failed."""
        lease = self.lease
        with store.transaction(self.sessions) as db:
            job = db.get_one(Job, _pk(db, lease.job_id))
            job_failures = [*job.failures, f"attempt {lease.attempt}: {reason}"]
            if len(job_failures) >= self.settings.max_attempts:
                error = {
                    "code": "training_failed",
                    "message": f"the job failed {len(job_failures)} times: " + "; ".join(job_failures),
                    "param": None,
                }
                outcome, message, values = "failed", f"Job failed: {reason}", {"error": error}
                level = "error"
            else:
                outcome, values, level = "queued", None, "warn"
                message = f"Attempt {lease.attempt} failed ({reason}); the job goes back to the queue"
            final = self._end(
                db,
                outcome,
                message,
                values=values,
                always={"failures": job_failures},
                level=level,
                data={"traceback": trace},
            )
            if final is None:
                log.warning("job %s crashed after %s lost its lease", lease.job_id, self.worker_id)

    # ------------------------------------------------------------------------------------------------- helpers
    def _event(self, message: str, **kw: Any) -> None:
        with store.transaction(self.sessions) as db:
            self._hold(db)
            store.add_event(db, self.lease.job_id, message, **kw)

    def _hold(self, db: Session) -> None:
        """Go on only while the job is this worker's; it stays so until `db` commits (store.holds)."""
        if not store.holds(db, self.lease):
            raise LostLease()


# The event of a run's end where it is not the outcome the worker wrote (store.RUN_ENDS): a pending control's.
_END_EVENTS = {
    "cancelled": "Job cancelled",
    "paused": "Job paused at step {step}",
    "queued": "Worker {worker} stopped; job re-queued at step {step}",
}


def _pk(db: Session, job_id: str) -> int:
    return db.scalar(select(Job.pk).where(Job.id == job_id))


def _report_note(report: dict[str, Any], job_id: str) -> str:
    """The job event that says the before/after report is there, with its first figure."""
    n = report.get("n_test", 0)
    note = f"Before/after report on {n} held-out test records"
    figures = {v["key"]: v.get("headline", {}) for v in report.get("variants", [])}
    first = next(iter(figures.get("tuned", {})), None)
    if first is not None and first in figures.get("base", {}):
        note += f": {first} {figures['base'][first]:.1f} (base) → {figures['tuned'][first]:.1f} (tuned)"
    return note + f" (GET /v1/fine_tuning/jobs/{job_id}/report)"


def _split_note(job: _JobView, has_validation_file: bool) -> tuple[str, str] | None:
    """The job event that says what becomes of `validation_split` where it is not the default's usual effect."""
    value = job.extras.get("validation_split", "auto")
    if has_validation_file and value not in ("auto", 0):
        return f"validation_split {value} is not used: the job validates on its validation file", "warn"
    if not has_validation_file and value == 0:
        return (
            "validation_split is 0: no records held out, so no validation loss, early stopping or best checkpoint",
            "info",
        )
    return None


def _error_code(e: TuneforgeError) -> str:
    if isinstance(e, DataError):
        return "invalid_training_data"
    if isinstance(e, ConfigError):
        return "invalid_hyperparameters"
    if isinstance(e, ModelError):
        return "model_error"
    return "job_error"


class _JobView:
    """The fields of a job row the lifecycle needs outside a session."""

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
            "grader",
            "hyperparameters",
            "resolved",
            "extras",
            "run_dir",
        ):
            setattr(v, k, getattr(job, k))
        v.extras = dict(v.extras or {})
        return v


class _EventSink:
    """Receives the training loop's events and writes them as job events, checkpoints and progress; also the
    values the library resolved for "auto" hyperparameters, and the validation split it held out."""

    def __init__(self, job: JobRun, cfg: RunConfig):
        self.job, self.lease, self.cfg = job, job.lease, cfg
        self.base_learning_rate = openai.base_learning_rate(cfg.method.name, job.settings)
        self.total_steps: int | None = None
        self.t0 = time.time()
        self.start_step: int | None = None
        self._last_train: dict[str, Any] = {}
        self._last_val: dict[str, Any] = {}
        self._checked = 0.0
        self._stop = False
        with job.sessions() as db:
            seen = db.execute(
                select(JobEvent.step, JobEvent.data).where(
                    JobEvent.job_id == self.lease.job_id, JobEvent.type == "metrics"
                )
            ).all()
        # After a resume the loop replays the steps since the last checkpoint with the same values: keep one.
        self._seen = {(step, "valid_loss" in (data or {})) for step, data in seen}
        # A validation split to report once the run has written it (not again after a resume).
        self._held_out_pending = (
            cfg.data.validation is None and cfg.data.split.validation > 0 and not self._held_out_recorded()
        )

    def __call__(self, kind: str, payload: dict[str, Any]) -> None:
        if self.job.lost.is_set():
            return
        if self._held_out_pending:
            self._held_out()
        if kind == "message":
            total = payload.get("total_steps")
            with store.transaction(self.job.sessions) as db:
                if not self._holds(db):
                    return
                job = db.get_one(Job, _pk(db, self.lease.job_id))
                if total is not None:
                    self.total_steps = total
                    job.total_steps = total
                store.add_event(db, self.lease.job_id, payload.get("message", ""))
                if payload.get("resolved"):
                    self._resolved(db, job, payload["resolved"])
        elif kind == "metrics":
            self._metrics(payload)
        elif kind == "checkpoint":
            self._checkpoint(payload)

    def _resolved(self, db: Session, job: Job, resolved: dict[str, Any]) -> None:
        """The library's set-up chose the "auto" epochs and learning rate: the job reports them as numbers, and
        why as an event. Unchanged values (a resumed run reuses them) add no event."""
        values = openai.reported(resolved, self.base_learning_rate)
        current = dict(job.resolved or job.hyperparameters)
        for name, (value, why) in values.items():
            if current.get(name) == value:
                continue
            current[name] = value
            lr = resolved["train.learning_rate"]["value"] if name == "learning_rate_multiplier" else None
            detail = f" (learning rate {lr:.3g})" if lr is not None else ""
            store.add_event(db, job.id, f"{name} set to {value}{detail}" + (f": {why}" if why else ""))
        job.resolved = current  # a new dict: the JSON column sees the change

    def _held_out_recorded(self) -> bool:
        with self.job.sessions() as db:
            ids = db.scalar(select(Job.result_files).where(Job.id == self.lease.job_id)) or []
            if not ids:
                return False
            names = db.scalars(select(store.File.filename).where(store.File.id.in_(ids)))
            return openai.HELD_OUT_FILENAME in set(names)

    def _held_out(self) -> None:
        """Once the run has split its data: how many training records it held out for validation, as a job
        event, and those records as a result file of the job (validation_split.jsonl)."""
        run = RunDir(self.cfg.run_dir)
        if not run.splits_marker.is_file():
            return  # not split yet: the first events come from loading the model
        self._held_out_pending = False
        counts = json.loads(run.splits_marker.read_text())
        held = read_split(run.split("validation"))
        if not held:
            return
        n = counts["train"] + len(held)
        report = json.loads(run.data_report.read_text()) if run.data_report.is_file() else {}
        strata = report.get("stats", {}).get("stratified_by", "none")
        how = "seeded" + (f", stratified by {strata}" if strata != "none" else "")
        data = openai.held_out_records(Path(self.cfg.data.train), held)
        with store.transaction(self.job.sessions) as db:
            if not self._holds(db):
                return
            job = db.get_one(Job, _pk(db, self.lease.job_id))
            file_id = self.job.result_file(db, job.owner, openai.HELD_OUT_FILENAME, data)
            job.result_files = [*(job.result_files or []), file_id]
            store.add_event(
                db,
                job.id,
                f"Held out {len(held)} of {n} training examples for validation ({len(held) / n:.0%}, {how}); "
                f"see the job's result file {openai.HELD_OUT_FILENAME} ({file_id})",
                data={
                    "held_out": len(held),
                    "training_examples": n,
                    "stratified_by": strata,
                    "file": file_id,
                },
            )

    def _metrics(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        is_val = "val_loss" in row
        if is_val:
            self._last_val = row
            same_step = self._last_train if self._last_train.get("step") == step else None
            data = openai.metrics(row, train=same_step)
            msg = f"Step {step}: validation loss={row['val_loss']:.4f}"
        else:
            self._last_train = row
            data = openai.metrics(row)
            msg = f"Step {step}" + (f"/{self.total_steps}" if self.total_steps else "")
            msg += f": training loss={row['loss']:.4f}"
        if self.total_steps:
            data["total_steps"] = self.total_steps
        if self.start_step is None:
            self.start_step = step - 1
            self.t0 = time.time()
        with store.transaction(self.job.sessions) as db:
            if not self._holds(db):
                return
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
        metrics = openai.checkpoint_metrics(step, self._last_train, self._last_val)
        with store.transaction(self.job.sessions) as db:
            if not self._holds(db):
                return
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

    def _holds(self, db: Session) -> bool:
        """Whether the job is still this worker's (and stays so until `db` commits); if not, the loop is told to
        stop and nothing is written: a request took the job (cancelled or paused it at once), or another worker."""
        if store.holds(db, self.lease):
            return True
        self.job.lost.set()
        return False

    def should_stop(self) -> bool:
        """Polled every step: the lease is lost, the worker stops, or the job's control flag asks for a stop.
        The flag is read from the database at most every `control_poll_s`."""
        if self.job.lost.is_set() or self.job.stopping.is_set():
            return True
        t = time.monotonic()
        if t - self._checked >= self.job.settings.control_poll_s:
            self._checked = t
            with self.job.sessions() as db:
                control = db.scalar(select(Job.control).where(Job.id == self.lease.job_id))
            self._stop = control in ("pause", "cancel")
        return self._stop
