"""General data: the bundled alpaca sets that measure forgetting (`eval.general`) and feed replay and EWC
(`forgetting.data`), or a user's file in their place."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tuneforge.data.schema import Example
from tuneforge.errors import DataError

BUNDLED = {"eval": "general-eval.jsonl", "train": "general-train.jsonl"}


def general_path(value: str, which: str) -> Path:
    """A general-data setting (`bundled` or a file) as a path."""
    if value == "bundled":
        return Path(str(resources.files("tuneforge.data") / "bundled" / BUNDLED[which]))
    return Path(value)


def general_examples(value: str, which: str) -> list[Example]:
    from tuneforge.data.formats import load_file

    path = general_path(value, which)
    if not path.is_file():
        key = "eval.general" if which == "eval" else "forgetting.data"
        raise DataError(f"general data file {path} does not exist", f"fix {key}, or set it to `bundled`")
    res = load_file(str(path), "auto", {}, None)
    if not res.examples:
        raise DataError(f"{path} holds no usable general examples", "give a chat/alpaca file with answers")
    return res.examples
