"""Preference tuning on the tiny model: DPO and ORPO learn to prefer the chosen answer on held-out pairs."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import ASKS, CAPITALS, tiny_config, write_jsonl
from tuneforge.errors import ConfigError, DataError
from tuneforge.recipes.lm import FineTune
from tuneforge.recipes.run import train as run_training


def preference_rows(n: int = 64, seed: int = 0) -> list[dict]:
    """User feedback on a chatbot: thumbs up for naming the capital, thumbs down for a refusal."""
    rng = random.Random(seed)
    pairs = [(c, a) for c in CAPITALS for a in ASKS]
    rng.shuffle(pairs)
    refusals = ["I don't know.", "Sorry, I cannot help with that.", "No idea, look it up."]
    return [
        {"prompt": a.format(c=c), "chosen": CAPITALS[c], "rejected": rng.choice(refusals)}
        for c, a in pairs[:n]
    ]


@pytest.fixture
def pref_file(tmp_path):
    return write_jsonl(tmp_path / "prefs.jsonl", preference_rows())


def _pref_config(tiny_model_dir, pref_file, tmp_path, *overrides):
    return tiny_config(
        tiny_model_dir,
        pref_file,
        tmp_path / "run",
        *overrides,
        "objective.beta=0.5",
        "train.learning_rate=1e-2",
        "train.max_steps=12",
        "train.eval_every=4",
        "data.split.test=0.0",
        "data.split.validation=0.25",
    )


def _evals(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_loss" in r], [r for r in rows if "loss" in r]


def test_dpo_margin_and_preference_accuracy_rise_on_held_out_pairs(tiny_model_dir, pref_file, tmp_path):
    cfg = _pref_config(tiny_model_dir, pref_file, tmp_path, "objective=dpo", "method.name=lora", "method.r=8")
    run_training(cfg)
    evals, steps = _evals(tmp_path / "run")
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=0.02)  # the model is its own reference at step 0
    assert steps[-1]["loss"] < 0.5
    assert evals[-1]["val_reward_margin"] > evals[0]["val_reward_margin"] > 0
    assert evals[-1]["val_reward_accuracy"] >= 0.9
    assert evals[-1]["val_loss"] < 0.6931


def test_orpo_learns_without_a_reference_and_with_full_weights(tiny_model_dir, pref_file, tmp_path):
    cfg = _pref_config(tiny_model_dir, pref_file, tmp_path, "objective=orpo")
    run_training(cfg)
    evals, steps = _evals(tmp_path / "run")
    assert steps[-1]["loss"] < 0.7 * steps[0]["loss"]
    assert (
        evals[-1]["val_reward_accuracy"] > evals[0]["val_reward_accuracy"]
        or evals[0]["val_reward_accuracy"] == 1
    )
    assert evals[-1]["val_reward_accuracy"] >= 0.9
    assert evals[-1]["val_reward_margin"] > evals[0]["val_reward_margin"]


def test_impossible_combinations_are_refused_with_what_to_use(
    tiny_model_dir, pref_file, capitals_file, tmp_path
):
    with pytest.raises(ConfigError, match="use method lora, or objective orpo"):
        tiny_config(tiny_model_dir, pref_file, tmp_path / "a", "objective=dpo")  # method full has no adapters
    with pytest.raises(ConfigError, match="data.format is chat.*use objective sft"):
        tiny_config(tiny_model_dir, pref_file, tmp_path / "a", "objective=orpo", "data.format=chat")
    with pytest.raises(ConfigError, match="forgetting.distill.*use method lora"):
        tiny_config(tiny_model_dir, pref_file, tmp_path / "a", "forgetting.distill=0.5")
    # chat data without pairs: refused once the data is read, before any training
    cfg = tiny_config(tiny_model_dir, capitals_file, tmp_path / "b", "objective=orpo")
    with pytest.raises(DataError, match="need pairs.*objective: sft"):
        FineTune(cfg).setup()
