"""The life of one leased export: `ExportRun` takes a queued export of a fine-tuned model to succeeded (its files
written by `recipes.export.export_run` into DATA_DIR/exports/<export id>, and checked against the tuned model) or
failed (the reason in `error`); `content` and `tar_stream` give its files to the API.

An export is one call of the library, with nothing to resume: a worker that dies holding one (its lease runs out)
leaves the export to the next worker, which starts it again from nothing; after `max_attempts` such starts it
fails. An export whose request the model cannot satisfy (an architecture the GGUF writer does not handle, a
prompt-learning method, ...) fails with the library's message and what to do instead.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.errors import ExportError, TuneforgeError
from tuneforge.jobs import store
from tuneforge.jobs.lifecycle import LostLease
from tuneforge.jobs.store import ExportJob, FineTunedModel, Lease
from tuneforge.rundir import RunDir
from tuneforge.settings import Settings

log = logging.getLogger("tuneforge.worker")

GGUF_FORMATS = ("gguf", "gguf-lora", "ollama")  # checked by running them in llama.cpp
LLAMA_CPP_MISSING = (
    "not checked: llama-cpp-python, which runs GGUF files for the check, is not installed on the server "
    "(pip install 'tuneforge[gguf]')"
)


class ExportRun:
    """One export, from the lease a worker took on it to succeeded or failed. `lost` is set by the worker's
    heartbeat when the lease is gone (another worker took the export over, or a client deleted it)."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        worker_id: str,
        lease: Lease,
        lost: threading.Event,
    ):
        self.settings, self.sessions, self.worker_id, self.lease = settings, sessions, worker_id, lease
        self.lost = lost

    def run(self) -> None:
        try:
            self._run()
        except LostLease:
            log.warning(
                "export %s was taken over or deleted; %s lets go of it", self.lease.job_id, self.worker_id
            )
        except ExportError as e:  # the model cannot be exported like that: the client's to change
            self._fail("export_not_supported", str(e))
        except TuneforgeError as e:  # the run or its base cannot be read (deleted files, a moved base ...)
            self._fail("export_error", str(e))
        except Exception as e:  # a bug or the machine (out of memory, a full disk): the log has the details
            log.exception("export %s crashed", self.lease.job_id)
            self._fail(
                "internal_error",
                f"the export failed on the server ({type(e).__name__}); the server's log has the details",
            )

    def _run(self) -> None:
        lease, s = self.lease, self.settings
        if lease.recovered:
            log.warning(
                "export %s: worker %s stopped renewing its lease; starting it again (attempt %d)",
                lease.job_id,
                lease.previous_owner,
                lease.attempt,
            )
        if lease.attempt > s.max_attempts:
            self._fail(
                "max_attempts_exceeded",
                f"the export was started {lease.attempt - 1} times and its worker stopped each time "
                "(killed, or out of memory); it was given up",
            )
            return
        taken = self._take_up()
        if taken is None:
            return
        run_dir, to, quant, out = taken
        remove_files(out)  # what an earlier attempt left
        result = self._export(run_dir, to, quant, out)
        if self.lost.is_set():
            raise self._lost(out)
        with store.transaction(self.sessions) as db:
            ok = store.finish_lease(
                db,
                lease,
                status="succeeded",
                result=result,
                error=None,
                finished_at=int(store.now()),
            )
        if not ok:
            raise self._lost(out)

    def _take_up(self) -> tuple[Path, str, str | None, Path] | None:
        """(run folder, format, quant, output folder) of the export, now running; None if it ended here."""
        with store.transaction(self.sessions) as db:
            row = db.scalar(select(ExportJob).where(ExportJob.id == self.lease.job_id))
            if row is None or row.lease_token != self.lease.token:
                raise LostLease()
            model = db.scalar(
                select(FineTunedModel).where(
                    FineTunedModel.id == row.model, FineTunedModel.owner == row.owner
                )
            )
            if model is not None:
                row.status, row.started_at = "running", int(store.now())
                return Path(model.run_dir), row.format, row.quant, Path(row.out_dir)
            missing = row.model
        self._fail(
            "model_not_found",
            f"the fine-tuned model {missing} was deleted before it could be exported — fine-tune it again and "
            "export the new model",
        )
        return None

    def _export(self, run_dir: Path, to: str, quant: str | None, out: Path) -> dict[str, Any]:
        # Imported here: the recipes (and torch behind them) load when a worker first exports.
        from tuneforge.recipes.export import export_run

        n = self.settings.export_verify_prompts
        # A GGUF is checked by running it in llama.cpp; a server without llama-cpp-python still writes the file,
        # unchecked, rather than failing an export whose files are fine.
        skipped = LLAMA_CPP_MISSING if to in GGUF_FORMATS and not _has_llama_cpp() else None
        check = n > 0 and skipped is None
        result = export_run(
            run_dir,
            to,
            quant=quant,
            out=out,
            verify_export=check,
            prompts=verification_prompts(run_dir) if check else None,
            limit=n or None,
            force=True,
        )
        result = json.loads(json.dumps(result, default=str))  # as export.json holds it (paths as strings)
        if not check:
            result["verification"] = {
                "skipped": skipped or "not checked: TUNEFORGE_EXPORT_VERIFY_PROMPTS is 0"
            }
        elif "verification" not in result:
            result["verification"] = {"skipped": "not checked: the run has no prompts to check it on"}
        return result

    def _lost(self, out: Path) -> LostLease:
        """The lease is gone. A deleted export's files are removed (the client asked for that); an export another
        worker took over is left to it."""
        with self.sessions() as db:
            exists = db.scalar(select(ExportJob.pk).where(ExportJob.id == self.lease.job_id)) is not None
        if not exists:
            remove_files(out)
        return LostLease()

    def _fail(self, code: str, message: str) -> None:
        """Failed, with what to do; files a failure left behind are removed (a failed export has no content)."""
        log.info("export %s failed: %s", self.lease.job_id, message)
        with store.transaction(self.sessions) as db:
            out = db.scalar(select(ExportJob.out_dir).where(ExportJob.id == self.lease.job_id))
            ok = store.finish_lease(
                db,
                self.lease,
                status="failed",
                error={"code": code, "message": message},
                finished_at=int(store.now()),
            )
        if ok and out:
            remove_files(Path(out))


def _has_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def verification_prompts(run_dir: Path) -> Path | None:
    """The data file an export is checked on, or None for the run's own test split. A job's run has no test split
    (the user's records are for training and validation), so the check asks the job's validation file, or else its
    training file: the check compares the export's answers with the tuned model's on the same prompts, which need
    not be unseen ones (the task score reported beside it then is on records the model may have trained on)."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        return None  # not a run: export_run says so
    test = run.split("test")
    if test.is_file() and test.stat().st_size > 0:
        return None
    data = (yaml.safe_load(run.config.read_text()) or {}).get("data") or {}
    for path in (data.get("validation"), data.get("train")):
        if isinstance(path, str) and Path(path).is_file():
            return Path(path)
    return None


def remove_files(out: Path) -> None:
    """An export's folder, and the temporary folders beside it that an interrupted write left."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def verification_status(row: ExportJob) -> str | None:
    """passed / failed / unverified once the files are written; None before."""
    return (row.result or {}).get("status") if row.status == "succeeded" else None


# ------------------------------------------------------------------------------------------------- content
@dataclass
class Content:
    """What GET /v1/exports/{id}/content sends: one file as it is (`path` a file), or a folder as a tar whose
    entries sit under the folder `name`."""

    path: Path
    name: str

    @property
    def is_file(self) -> bool:
        return self.path.is_file()


def content(row: ExportJob) -> Content | None:
    """The export's download, or None if its files are gone from the data directory."""
    out = Path(row.out_dir)
    files = (row.result or {}).get("files") or {}
    name = download_name(row)
    if row.format == "gguf":
        path = out / files.get("gguf", "")
        return Content(path, f"{name}.gguf") if path.is_file() else None
    return Content(out, name) if out.is_dir() else None


def download_name(row: ExportJob) -> str:
    """ft:tiny:alice:caps:abc, gguf, q8_0 → ft-tiny-alice-caps-abc-gguf-q8_0 (a safe file name)."""
    parts = [row.model, row.format, *([row.quant] if row.quant else [])]
    raw = "-".join(parts)
    return (
        "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "-" for c in raw).strip(".-") or row.id
    )


class TarStream:
    """An uncompressed tar of a folder, produced while it is sent: headers and file bytes in chunks, never the
    whole archive (a merged model is gigabytes) in memory or on disk. Its size is known before the first byte,
    so the response carries a Content-Length."""

    CHUNK = 1 << 20

    def __init__(self, folder: Path, root: str):
        self.entries: list[tuple[Path, bytes, int]] = []
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            st = path.stat()
            info = tarfile.TarInfo(f"{root}/{path.relative_to(folder).as_posix()}")
            info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), 0o644
            self.entries.append(
                (path, info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), st.st_size)
            )
        body = sum(len(h) + _padded(n) for _, h, n in self.entries) + 2 * tarfile.BLOCKSIZE
        self.size = _padded(body, tarfile.RECORDSIZE)

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for path, header, size in self.entries:
            yield header
            left = size
            with open(path, "rb") as fh:
                while left > 0 and (data := fh.read(min(self.CHUNK, left))):
                    left -= len(data)
                    yield data
            if left:  # the file shrank while it was sent: keep the archive the length announced
                yield b"\0" * left
            yield b"\0" * (_padded(size) - size)
            sent += len(header) + _padded(size)
        yield b"\0" * (self.size - sent)  # the end-of-archive blocks, padded to a whole record


def _padded(n: int, unit: int = tarfile.BLOCKSIZE) -> int:
    return -(-n // unit) * unit
