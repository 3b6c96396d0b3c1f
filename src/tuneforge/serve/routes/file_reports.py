"""GET /v1/files/{id}/inspect (tuneforge): what `tuneforge data inspect` says about an uploaded file — format,
counts, problems and unusable records with their line numbers, duplicates, the length histogram — plus its first
records as the model will see them. The console's dataset page reads it; any client can."""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from tuneforge.config import DataConfig
from tuneforge.errors import TuneforgeError
from tuneforge.serve.auth import Tenant
from tuneforge.serve.deps import SettingsDep, db_session
from tuneforge.serve.errors import bad_request
from tuneforge.serve.routes.files import get_file

router = APIRouter(prefix="/v1/files", tags=["files"])


@functools.lru_cache(maxsize=8)
def _tokenizer(source: str) -> Any:
    from tuneforge.models.load import tokenizer_for

    return tokenizer_for(source)


@router.get(
    "/{file_id}/inspect",
    summary="Inspect a file (tuneforge)",
    response_model=dict[str, Any],
    description="tuneforge: the data report of an uploaded file (as `tuneforge data inspect` prints it), with "
    "places as `line N` of the uploaded file. With `model` (a base model id), lengths are in that model's tokens "
    "and each preview record carries `rendered`: the text it is trained on, in the model's chat template.",
)
def inspect(
    file_id: str,
    request: Request,
    settings: SettingsDep,
    owner: Tenant,
    model: str | None = None,
    preview: Annotated[int, Query(ge=0, le=50)] = 5,
) -> dict[str, Any]:
    from tuneforge.data.inspect import inspect_file
    from tuneforge.data.tokenize import count_tokens_fn, trained_text_fn

    with db_session(request) as session:  # closed before the (slower) reading of the file
        f = get_file(session, owner, file_id)
        path, filename = f.path, f.filename
    if model is not None and model not in settings.base_models:
        offered = ", ".join(sorted(settings.base_models))
        raise bad_request(f"Unknown base model {model!r} (available: {offered}).", "model", "model_not_found")
    count = render = None
    note = None
    if model is not None:
        try:
            tok = _tokenizer(settings.base_models[model])
        except TuneforgeError as e:
            note = f"lengths in characters: the tokenizer of {model} did not load ({e})"
        else:
            cfg = DataConfig(train="-")
            count, render = count_tokens_fn(tok, cfg), trained_text_fn(tok, cfg)
    try:
        report = inspect_file(
            path, count_tokens=count, render=render, min_examples=settings.min_examples, preview=preview
        )
    except TuneforgeError as e:
        raise bad_request(renamed(str(e), places(path, filename)), "file_id", "unreadable_file") from None
    report = renamed_json(report, places(path, filename))
    report["filename"] = filename
    if note:
        report["note"] = note
    return report


def places(path: str, filename: str) -> list[tuple[str, str]]:
    """Places in the stored file ("/srv/files/file-abc.jsonl:12") as the user knows them ("line 12"): the
    server's path is never shown."""
    return [(path + ":", "line "), (path, filename)]


def renamed(text: str, renames: list[tuple[str, str]]) -> str:
    for old, new in renames:
        text = text.replace(old, new)
    return text


def renamed_json(data: Any, renames: list[tuple[str, str]]) -> Any:
    """`data` with `renames` applied to every string in it (through its JSON text, each side escaped as JSON)."""
    escaped = [(json.dumps(old)[1:-1], json.dumps(new)[1:-1]) for old, new in renames]
    return json.loads(renamed(json.dumps(data), escaped))
