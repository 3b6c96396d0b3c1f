"""Fixtures shared by the data tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .helpers import write


@pytest.fixture
def tmp_file(tmp_path: Path):
    """tmp_file("name.jsonl", records) writes the records and returns the path."""

    def make(name: str, records: list[Any]) -> Path:
        return write(tmp_path / name, records)

    return make
