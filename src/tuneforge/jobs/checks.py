"""The `validating_files` phase: OpenAI's checks on a job's files, with its error codes and line numbers.

The data pipeline, when it trains from a config, drops bad records and reports them. A job is stricter, like
OpenAI's: one bad record fails the job, and its `error` says which line of which file and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneforge.data.formats import load_file
from tuneforge.data.schema import Example, Problem, Reject
from tuneforge.data.validate import validate
from tuneforge.errors import TuneforgeError
from tuneforge.jobs.graders import prepare_rows, rewards_from_grader

MAX_LISTED = 5  # problems spelled out in one error message


@dataclass
class JobError(Exception):
    """Why a job failed, as OpenAI's job `error`: {code, message, param}."""

    code: str
    message: str
    param: str | None = None

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "param": self.param}


@dataclass
class CheckedFile:
    examples: list[Example]
    format: str
    warnings: list[Problem]


def check_file(path: Path, param: str, label: str, min_examples: int) -> CheckedFile:
    """Read and validate one uploaded file. `label` names it in messages ("training file file-abc (a.jsonl)")."""
    try:
        loaded = load_file(path)
    except TuneforgeError as e:
        raise JobError("invalid_file_format", f"{label}: {_strip_path(e.problem, path)}", param) from None
    if loaded.rejects:
        raise JobError(
            "invalid_file_format", _listing(label, [_reject_text(r) for r in loaded.rejects]), param
        )
    problems = validate(loaded.examples, min_examples=min_examples)
    errors = [p for p in problems if p.severity == "error"]
    record_errors = [p for p in errors if p.source is not None]
    if record_errors:
        codes = {p.code for p in record_errors}
        code = record_errors[0].code if len(codes) == 1 else "invalid_file_format"
        raise JobError(code, _listing(label, [_problem_text(p) for p in record_errors]), param)
    if errors:  # dataset-level: too few examples
        raise JobError(errors[0].code, f"{label}: {errors[0].message}", param)
    return CheckedFile(loaded.examples, loaded.format, [p for p in problems if p.severity == "warning"])


def check_for_method(path: Path, param: str, label: str, method_type: str, min_examples: int) -> CheckedFile:
    """One of a job's files read and checked, and checked to hold what its method trains on."""
    checked = check_file(path, param, label, min_examples)
    check_method_fits(checked, method_type, param, label)
    return checked


def reinforcement_rows(path: Path, param: str, label: str, grader: dict, dst: Path) -> Path:
    """A reinforcement job's file as the rows GRPO trains on: each row's reference (the item field its grader
    reads) moved into an answer turn, in `dst` (jobs/graders.py). A row with nothing to grade against fails the
    job, by line."""
    field = rewards_from_grader(grader).reference_field
    _, unanswered = prepare_rows(path, field, dst)
    if unanswered:
        where = ", ".join(map(str, unanswered[:MAX_LISTED])) + (
            " ..." if len(unanswered) > MAX_LISTED else ""
        )
        need = f"a {field!r} field (the grader's reference) or" if field else ""
        raise JobError(
            "invalid_file_format",
            f"{label}: {len(unanswered)} row(s) (line {where}) have nothing to grade answers against; give each "
            f"{need} a final assistant turn with the reference answer.",
            param,
        )
    return dst


def check_method_fits(checked: CheckedFile, method_type: str, param: str, label: str) -> None:
    """DPO trains on preference pairs, supervised jobs on conversations: a file of the other kind fails the job
    with the method it would suit."""
    if method_type == "dpo":
        unpaired = [i for i, ex in enumerate(checked.examples) if not ex.is_pair()]
        if checked.format != "preference" or unpaired:
            raise JobError(
                "invalid_file_format",
                f"{label}: a dpo job needs preference pairs on every line (input + preferred_output + "
                "non_preferred_output, or prompt + chosen + rejected); "
                + (
                    f"this file holds {checked.format} records."
                    if checked.format != "preference"
                    else f"line {unpaired[0] + 1} has no pair (a thumbs-up/down label alone is KTO data)."
                ),
                param,
            )
    elif method_type == "kto":
        if checked.format != "preference":
            raise JobError(
                "invalid_file_format",
                f"{label}: a kto job needs answers rated up or down on every line (messages + label true/false, "
                f"or prompt + completion + label; preference pairs work too); this file holds {checked.format} "
                "records.",
                param,
            )
    elif checked.format == "preference":
        raise JobError(
            "invalid_file_format",
            f"{label} holds preference records; create the job with method "
            '{"type": "dpo"} (pairs) or {"type": "kto"} (answers rated up or down) to train on them, or upload '
            "conversations for a supervised job.",
            param,
        )


def _line(source) -> str:
    if source is None:
        return "file"
    return f"line {source.line}" if source.line is not None else f"record {source.index + 1}"


def _problem_text(p: Problem) -> str:
    where = _line(p.source) + (f", {p.field}" if p.field else "")
    return f"{where}: {p.message} ({p.code})"


def _reject_text(r: Reject) -> str:
    where = _line(r.source) + (f", {r.field}" if r.field else "")
    return f"{where}: {r.reason}"


def _listing(label: str, items: list[str]) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    more = f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    n = len(items)
    return f"{label} has {n} invalid record{'s' if n != 1 else ''}: {shown}{more}"


def _strip_path(text: str, path: Path) -> str:
    """Messages from the reader name the stored path; the user knows the file by its id and name."""
    return text.replace(str(path), "the file")
