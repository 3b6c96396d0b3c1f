"""GRPO on the tiny model: a reward that prefers one answer makes it more frequent over the steps, groups whose
answers all score the same are counted and give no gradient, a failing reward function stops training with its
name and the answer, a stopped run resumes to the uninterrupted run's numbers, and impossible configs are refused.

The tiny model starts from random weights, whose samples are near-uniform over 49k tokens: no reward would ever
see a capital. So a short SFT stage teaches it the capitals' answer format first (module fixture), and GRPO then
rewards one capital, Paris, whatever the question: its share among the sampled answers must rise."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import capitals_records, tiny_config, write_jsonl
from tuneforge.errors import ConfigError
from tuneforge.recipes.run import finetune
from tuneforge.recipes.run import train as run_training
from tuneforge.train.loop import accumulate_gradients
from tuneforge.train.rewards import RewardError


def paris(prompt: str, completion: str, example) -> float:
    return float("Paris" in completion)


def constant(prompt: str, completion: str, example) -> float:
    return 0.5


def broken(prompt: str, completion: str, example) -> float:
    return 1 / 0


def not_a_number(prompt: str, completion: str, example):
    return "good"


def reward(name: str) -> str:
    return f"objective.rewards=[{{function: 'tests.train.test_grpo:{name}'}}]"


@pytest.fixture(scope="module")
def sft(tiny_model_dir, tmp_path_factory):
    """(model folder, data file): the tiny model after a short full-SFT run on the capitals."""
    tmp = tmp_path_factory.mktemp("grpo-sft")
    data = write_jsonl(tmp / "capitals.jsonl", capitals_records(64))
    cfg = tiny_config(tiny_model_dir, data, tmp / "sft", "train.epochs=10", "train.learning_rate=1e-2")
    finetune(cfg, evaluate=False, show=False)
    return tmp / "sft" / "model", data


def grpo_config(sft, run_dir, *overrides):
    model, data = sft
    return tiny_config(
        model,
        data,
        run_dir,
        "method.name=lora",
        "objective.name=grpo",
        "objective.num_generations=4",
        "objective.max_new_tokens=6",
        "train.batch_size=4",
        "train.learning_rate=2e-2",
        "train.eval_every=100",
        *overrides,
    )


def rows(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_reward_for_one_answer_makes_it_more_frequent(sft, tmp_path):
    cfg = grpo_config(sft, tmp_path / "grpo", reward("paris"), "train.max_steps=24", "train.log_every=1")
    result, rec = run_training(cfg)
    rec.loop.cleanup()
    train = [r for r in rows(tmp_path / "grpo") if "reward" in r]
    assert len(train) == 24
    first, last = train[:6], train[-6:]
    share = [sum(r["reward"] for r in part) / len(part) for part in (first, last)]
    assert share[1] > share[0] + 0.2, share  # the share of sampled answers that say Paris
    assert share[0] < 0.7  # (there was something to learn)
    r = train[-1]
    for key in ("reward_std", "zero_variance", "kl", "completion_length", "clip_fraction", "generation_s"):
        assert key in r and math.isfinite(r[key]), key
    assert 0 < r["generation_s"] < r["seconds"]
    assert r["clip_fraction"] == 0  # one update per sampled batch: the ratio is 1
    assert r["kl"] > 0  # the adapter has moved away from its reference


def test_zero_variance_groups_are_counted_and_give_no_gradient(sft, tmp_path):
    cfg = grpo_config(sft, tmp_path / "flat", reward("constant"), "train.max_steps=1")
    result, rec = run_training(cfg)  # one step, to set everything up the way the loop does
    loop = rec.loop
    try:
        obj = loop.objective
        obj.begin_step(0)
        batches = [
            obj.collate([loop.train_items[i] for i in mb], loop.pad_id) for mb in loop.micro_batches(0)
        ]
        loop.optimizer.zero_grad(set_to_none=True)
        sums = accumulate_gradients(
            obj,
            loop.model,
            batches,
            loop.accelerator.device,
            loop.accelerator.autocast,
            torch.Tensor.backward,
        )
        assert sums.stats["zero_variance"] == pytest.approx(1.0)  # every answer sits in a zero-variance group
        grads = [p.grad for p in loop.model.parameters() if p.requires_grad]
        assert all(g is None or not g.any() for g in grads)
    finally:
        loop.cleanup()
    assert rows(tmp_path / "flat")[0]["zero_variance"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("fn", "says"), [("broken", "raised ZeroDivisionError"), ("not_a_number", "not a finite number")]
)
def test_a_failing_reward_names_itself_and_the_answer(sft, tmp_path, fn, says):
    cfg = grpo_config(sft, tmp_path / fn, reward(fn), "train.max_steps=2")
    with pytest.raises(RewardError) as err:
        run_training(cfg)
    msg = str(err.value)
    assert f"tests.train.test_grpo:{fn}" in msg and says in msg and "on the answer" in msg


def test_a_stopped_run_resumes_to_the_uninterrupted_runs_numbers(sft, tmp_path):
    whole = grpo_config(sft, tmp_path / "whole", reward("paris"), "train.max_steps=6", "train.log_every=1")
    _, rec = run_training(whole)
    rec.loop.cleanup()
    part = grpo_config(
        sft,
        tmp_path / "part",
        reward("paris"),
        "train.max_steps=6",
        "train.log_every=1",
        "train.save_every=3",
    )
    calls = iter(range(100))
    result, rec = run_training(part, should_stop=lambda: next(calls) >= 3)  # stops (and saves) after step 3
    rec.loop.cleanup()
    assert result.stopped_by_request and result.steps == 3
    _, rec = run_training(part, resume=True)
    rec.loop.cleanup()
    a = {r["step"]: r for r in rows(tmp_path / "whole") if "reward" in r}
    b = {r["step"]: r for r in rows(tmp_path / "part") if "reward" in r}
    assert a.keys() == b.keys() == set(range(1, 7))
    for step in a:
        assert b[step]["reward"] == a[step]["reward"], step  # the same samples
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5, abs=1e-7), step


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["objective.name=grpo"], "needs rewards"),
        (["objective.name=grpo", "objective.rewards=[nonsense]"], "unknown reward"),
        (["objective.name=grpo", "objective.rewards=[regex]"], "needs a pattern"),
        (["objective.name=grpo", "objective.rewards=[json_valid]"], "adapters off"),  # method full, beta 0.04
        (["objective.name=sft", "objective.rewards=[json_valid]"], "apply to objective grpo"),
        (
            ["objective.name=grpo", "objective.rewards=['nosuchmodule:f']", "method.name=lora"],
            "cannot import",
        ),
    ],
)
def test_impossible_grpo_configs_are_refused(tiny_model_dir, capitals_file, tmp_path, overrides, says):
    with pytest.raises((ConfigError, ValueError)) as err:
        cfg = tiny_config(tiny_model_dir, capitals_file, tmp_path / "x", *overrides)
        run_training(cfg)
    assert says in str(err.value)
