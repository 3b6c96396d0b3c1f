"""Sequential stages (raw-text continued pre-training → task) and multi-task mixing on the tiny model."""

from __future__ import annotations

import json

import pytest

from tests.conftest import capitals_records, tiny_config, write_jsonl
from tuneforge import api
from tuneforge.errors import ConfigError

QUICK = ["train.max_steps=6", "train.eval_every=6", "train.learning_rate=1e-2", "eval.general=null"]


def test_stages_run_in_order_each_from_the_previous_result(tiny_model_dir, capitals_file, tmp_path):
    text = write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"text": f"{r['messages'][0]['content']} {r['messages'][1]['content']}."}
            for r in capitals_records()
        ],
    )
    stages = [
        {
            "name": "domain",
            "data": {"train": str(text), "format": "text", "train_on": "all", "split": {"test": 0.0}},
            "method": "lora",
        },
        {"name": "task"},
    ]
    cfg = tiny_config(tiny_model_dir, capitals_file, tmp_path / "run", *QUICK, f"stages={json.dumps(stages)}")
    out = api.finetune(cfg, show=False)
    s1, s2 = tmp_path / "run" / "stage-1-domain", tmp_path / "run" / "stage-2-task"
    assert (s1 / "adapter").is_dir() and (s1 / "merged" / "config.json").is_file()
    assert (s2 / "model" / "model.safetensors").is_file()
    rows = [json.loads(x) for x in (s1 / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert rows[-1]["loss"] < rows[0]["loss"]  # continued pre-training on raw text learns
    cfg2 = json.loads(json.dumps(__import__("yaml").safe_load((s2 / "config.yaml").read_text())))
    assert cfg2["model"]["name"] == str((s1 / "merged").resolve())
    assert [s["stage"] for s in out["stages"]] == ["domain", "task"]
    again = api.finetune(cfg, resume=True, show=False)  # finished stages are skipped
    assert [s["stage"] for s in again["stages"]] == ["domain", "task"]


def test_continued_pretraining_is_reported_by_loss_on_held_out_texts(tiny_model_dir, tmp_path):
    """Raw text has no question to generate an answer for: base and tuned are compared by their loss and
    perplexity on the test texts, and continued pre-training lowers them."""
    text = write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"text": f"{r['messages'][0]['content']} {r['messages'][1]['content']}."}
            for r in capitals_records()
        ],
    )
    cfg = tiny_config(
        tiny_model_dir,
        text,
        tmp_path / "run",
        *QUICK,
        "data.format=text",
        "data.train_on=all",
        "data.split.test=0.2",
        "method.name=lora",
        "eval.few_shot=3",
    )
    report = api.finetune(cfg, show=False)["report"]
    assert [v["key"] for v in report["variants"]] == ["base", "tuned"]  # no few-shot prompt for raw text
    base, tuned = (v["headline"] for v in report["variants"])
    assert tuned["text perplexity"] < base["text perplexity"]
    assert report["gain"]["text loss (x100)"] < 0
    assert (tmp_path / "run" / "report.html").is_file()


def test_bad_stage_is_refused_naming_it(tiny_model_dir, capitals_file, tmp_path):
    with pytest.raises(ConfigError, match=r"stages\[0\] \(x\).*unknown config key `train.lr`"):
        tiny_config(tiny_model_dir, capitals_file, tmp_path / "r", "stages=[{name: x, train: {lr: 1}}]")


def test_multitask_mix_samples_by_weight_and_reports_per_task(tiny_model_dir, capitals_file, tmp_path):
    other = write_jsonl(
        tmp_path / "echo.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": f"Repeat: {w} {i}"},
                    {"role": "assistant", "content": w},
                ]
            }
            for i, w in enumerate(["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"] * 4)
        ],
    )
    mix = [
        {"name": "capitals", "train": str(capitals_file), "weight": 3},
        {"name": "echo", "train": str(other)},
    ]
    cfg = tiny_config(
        tiny_model_dir,
        capitals_file,
        tmp_path / "run",
        *QUICK,
        f"data.mix={json.dumps(mix)}",
        "data.train=null",
    )
    out = api.finetune(cfg, show=False)
    train = [json.loads(x) for x in (tmp_path / "run" / "data" / "train.jsonl").read_text().splitlines()]
    n = {t: sum(1 for r in train if r["meta"]["task"] == t) for t in ("capitals", "echo")}
    assert n["capitals"] == pytest.approx(3 * n["echo"], rel=0.1)
    assert set(out["report"]["tasks"]) == {"capitals", "echo"}
    assert "Per task" in (tmp_path / "run" / "report.html").read_text()
