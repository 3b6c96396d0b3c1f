"""model.adapter: a run continues a trained adapter (the next version of a tuned model) instead of a fresh one —
its first step starts from the adapter's loss, not the base's, and it keeps the adapter's rank."""

from __future__ import annotations

import json

import pytest

from tests.conftest import capitals_records, tiny_config, write_jsonl
from tuneforge.errors import ConfigError
from tuneforge.recipes.run import train as run_training


def _losses(run) -> list[float]:
    return [
        r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]


def test_a_run_continues_a_trained_adapter(tiny_base, tmp_path):
    data = write_jsonl(tmp_path / "caps.jsonl", capitals_records(48))
    common = ("method.name=lora", "train.learning_rate=1e-2", "data.split.test=0.0")
    first = tiny_config(tiny_base, data, tmp_path / "v1", *common, "method.r=4", "train.max_steps=12")
    run_training(first)
    v1 = _losses(tmp_path / "v1")
    assert v1[-1] < v1[0] - 0.5  # the first version learned something

    # the same data, continued: step 1 starts where v1 ended (not where a fresh adapter starts), rank 4 kept
    nxt = tiny_config(
        tiny_base,
        data,
        tmp_path / "v2",
        *common,
        "method.r=16",
        "train.max_steps=2",
        f"model.adapter={tmp_path / 'v1'}",
    )
    run_training(nxt)
    v2 = _losses(tmp_path / "v2")
    assert v2[0] < v1[0] - 0.5 and v2[0] == pytest.approx(v1[-1], abs=0.5)
    cfg = json.loads((tmp_path / "v2" / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4


def test_continuing_needs_an_adapter(tiny_base, tmp_path):
    data = write_jsonl(tmp_path / "caps.jsonl", capitals_records(16))
    with pytest.raises(ConfigError, match="model.adapter continues a trained adapter"):
        tiny_config(tiny_base, data, tmp_path / "r", "method.name=full", f"model.adapter={tmp_path}")
