"""A tiny model trained on the capitals task, shared by the experiment tests (trained once per session)."""

from __future__ import annotations

import pytest

from tests.conftest import capitals_records, tiny_config, write_jsonl
from tests.jobs.service_fixtures import tiny_base  # noqa: F401  (a tiny model LoRA can move)


@pytest.fixture(scope="session")
def tuned_run(tiny_model_dir, tmp_path_factory):
    """A full fine-tune of the tiny model on capitals: its folder is a run, and run/model a plain model folder."""
    from tuneforge import api

    tmp = tmp_path_factory.mktemp("tuned")
    data = write_jsonl(tmp / "capitals.jsonl", capitals_records())
    cfg = tiny_config(
        tiny_model_dir,
        data,
        tmp / "run",
        "train.learning_rate=1e-2",
        "train.epochs=12",
        "train.num_threads=1",
    )
    api.finetune(cfg, evaluate=False, show=False)
    return tmp / "run"
