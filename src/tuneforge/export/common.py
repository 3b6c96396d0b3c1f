"""What every export format shares: writing under a temporary name, the stop tokens, the base's hub id."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge.errors import ExportError
from tuneforge.models import templates


@contextlib.contextmanager
def staged(out: Path, force: bool = False) -> Iterator[Path]:
    """A temporary folder beside `out` that becomes `out` when the block finishes; removed if it fails, so a
    crash or an error never leaves a half-written export under the name the user asked for."""
    out = Path(out)
    if out.exists() and not force:
        raise ExportError(f"{out} already exists", "pass --force to replace it, or choose another --out")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)


def stop_tokens(tok: Any) -> list[tuple[int, str]]:
    """(id, text) of every token that ends an answer: the template's end-of-turn token and the EOS token. An export
    that does not declare all of them keeps talking past the end of its answer in llama.cpp, Ollama and vLLM."""
    return [(i, tok.convert_ids_to_tokens(i)) for i in templates.stop_token_ids(tok)]


def dir_size(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
