"""The `auto` training settings (train/auto.py) and the forgetting guard, on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.conftest import tiny_config
from tuneforge.recipes.lm import FineTune
from tuneforge.recipes.run import train
from tuneforge.train import auto

AUTO = ["train.learning_rate=auto", "train.epochs=auto", "method.name=lora", "method.r=8"]


def test_auto_epochs_gives_small_sets_more_passes_and_large_ones_fewer():
    assert auto.auto_epochs(81)[0] == 10  # 1,000 examples seen would be 13 epochs: capped at 10
    assert auto.auto_epochs(250)[0] == 4
    assert auto.auto_epochs(2_000)[0] == 3
    epochs, why = auto.auto_epochs(100_000)
    assert epochs == pytest.approx(0.3) and "30,000" in why


def test_lr_prior_follows_method_width_and_batch(tiny_model_dir, capitals_file, tmp_path):
    cfg = tiny_config(tiny_model_dir, capitals_file, tmp_path / "r", *AUTO)
    lora_7b, _ = auto.lr_prior(cfg, 4096)
    assert lora_7b == pytest.approx(2e-4)  # the field's reference rate at its reference size
    lora_small, why = auto.lr_prior(cfg, 576)
    assert lora_small == pytest.approx(2e-4 * 4096 / 576, rel=0.01) and "hidden size 576" in why
    full = tiny_config(tiny_model_dir, capitals_file, tmp_path / "r", "method.name=full")
    assert auto.lr_prior(full, 4096)[0] == pytest.approx(2e-5)
    big_batch = tiny_config(tiny_model_dir, capitals_file, tmp_path / "r", *AUTO, "train.batch_size=32")
    assert auto.lr_prior(big_batch, 4096)[0] == pytest.approx(4e-4)
    prompt = tiny_config(tiny_model_dir, capitals_file, tmp_path / "r", "method.name=prompt_tuning")
    assert auto.lr_prior(prompt, 576)[0] == pytest.approx(3e-2)  # soft prompts do not scale with width


def test_range_test_picks_a_rate_where_the_loss_falls_and_restores_the_weights(
    tiny_model_dir, capitals_file, tmp_path
):
    # full fine-tuning: the random tiny model learns fast enough for a clear curve in 30 steps
    cfg = tiny_config(tiny_model_dir, capitals_file, tmp_path / "r", "train.max_steps=1")
    rec = FineTune(cfg)
    rec.setup()
    model = rec.loop.unwrapped
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    test = auto.range_test(
        model, rec.objective, rec.train_seqs, pad_id=0, batch_size=8, device=torch.device("cpu"), steps=30
    )
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, before[n]), n  # a throw-away copy: training starts from the same weights
    low, high = test.falling()
    assert test.losses[test.lrs.index(high)] < 0.9 * test.losses[0]  # the loss really fell over that span
    assert low <= test.pick < high
    rec.loop.cleanup()


def test_auto_settings_are_stored_and_reused_on_resume(tiny_model_dir, capitals_file, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(
        tiny_model_dir, capitals_file, run, *AUTO, "train.lr_range_test=true", "train.max_steps=4"
    )
    events: list[tuple[str, dict]] = []
    result, rec = train(cfg, on_event=lambda kind, payload: events.append((kind, payload)))
    rec.loop.cleanup()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["learning_rate"] == "auto"  # the run's own settings stay as written ...
    lr = saved["resolved"]["train.learning_rate"]
    assert (
        "range test" in lr["why"] and lr["prior"] / 3 <= lr["value"] <= lr["prior"] * 3
    )  # ... with the decision
    assert saved["resolved"]["train.epochs"]["value"] == 10
    assert rec.cfg.train.learning_rate == lr["value"]  # what the optimizer used
    first_row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first_row["lr"] <= lr["value"]
    sent = [p["resolved"] for kind, p in events if kind == "message" and "resolved" in p]
    assert sent and sent[0]["train.learning_rate"]["value"] == lr["value"]

    # Resuming does not decide again: the stored values are used (no range test runs).
    def no_range_test(*args, **kwargs):
        raise AssertionError("the range test ran again on resume")

    longer = tiny_config(
        tiny_model_dir, capitals_file, run, *AUTO, "train.lr_range_test=true", "train.max_steps=4"
    )
    auto_range = auto.range_test
    auto.range_test = no_range_test
    try:
        rec2 = FineTune(longer, resume=True)
        rec2.setup()
        assert rec2.cfg.train.learning_rate == lr["value"]
        rec2.loop.cleanup()
    finally:
        auto.range_test = auto_range


def test_explicit_settings_are_left_alone(tiny_model_dir, capitals_file, tmp_path):
    cfg = tiny_config(tiny_model_dir, capitals_file, tmp_path / "r", "train.max_steps=1")
    rec = FineTune(cfg)
    rec.setup()
    assert rec.cfg.train.learning_rate == 3e-3 and rec.cfg.train.epochs == 4
    assert "train.learning_rate" not in rec.cfg.resolved
    rec.loop.cleanup()
