"""The OpenAI translation without a model or a database: model ids, metric names (events, checkpoints, the results
CSV), the "auto" hyperparameters with the base learning rate, and the run config of a job."""

from __future__ import annotations

import json

import pytest

from tuneforge.jobs import openai
from tuneforge.settings import Settings

TRAIN = {"step": 10, "loss": 1.25, "token_accuracy": 0.5, "lr": 2e-4, "tokens_per_s": 300.0, "epoch": 0.5}
VAL = {"step": 10, "epoch": 0.5, "val_loss": 1.5, "val_token_accuracy": 0.4, "val_ppl": 4.48}


def test_model_and_checkpoint_ids():
    assert openai.fine_tuned_model_id("tiny", "alice", "caps", "ftjob-abc") == "ft:tiny:alice:caps:abc"
    assert openai.fine_tuned_model_id("smollm2-135m", "bob", None, "ftjob-x1") == "ft:smollm2-135m:bob::x1"
    assert openai.checkpoint_model_id("ft:tiny:alice::abc", 40) == "ft:tiny:alice::abc:ckpt-step-40"


def test_a_training_row_gets_openai_names_in_order():
    data = openai.metrics({**TRAIN, "tokens": 120, "seconds": 0.4})
    assert list(data.items()) == [
        ("step", 10),
        ("train_loss", 1.25),
        ("train_mean_token_accuracy", 0.5),
        ("epoch", 0.5),
        ("learning_rate", 2e-4),
        ("tokens_per_second", 300.0),
    ]
    assert openai.metrics({"step": 3, "loss": 2.0})["train_mean_token_accuracy"] is None


def test_a_validation_row_carries_the_training_loss_of_its_step():
    assert list(openai.metrics(VAL).items()) == [
        ("step", 10),
        ("valid_loss", 1.5),
        ("valid_mean_token_accuracy", 0.4),
        ("full_valid_loss", 1.5),
        ("full_valid_mean_token_accuracy", 0.4),
        ("valid_perplexity", 4.48),
    ]
    data = openai.metrics(VAL, train=TRAIN)
    assert list(data)[-2:] == ["train_loss", "train_mean_token_accuracy"]
    assert data["train_loss"] == 1.25 and data["train_mean_token_accuracy"] == 0.5


def test_preference_rows_add_reward_accuracy_and_margin():
    train = {"step": 4, "loss": 0.69, "reward_accuracy": 0.75, "reward_margin": 0.2, "lr": 1e-4}
    data = openai.metrics(train)
    assert data["train_reward_accuracy"] == 0.75 and data["train_reward_margin"] == 0.2
    assert data["train_mean_token_accuracy"] is None
    val = {"step": 4, "val_loss": 0.6, "val_reward_accuracy": 1.0, "val_reward_margin": 0.3}
    data = openai.metrics(val, train=train)
    assert list(data)[-4:] == [
        "train_loss",
        "train_mean_token_accuracy",
        "valid_reward_accuracy",
        "valid_reward_margin",
    ]
    assert data["valid_reward_accuracy"] == 1.0 and data["valid_reward_margin"] == 0.3
    assert data["valid_perplexity"] is None  # a preference loss has no perplexity
    assert "train_reward_margin" not in openai.metrics({"step": 5, "loss": 0.5, "reward_margin": None})


def test_checkpoint_metrics_take_the_latest_rows_at_or_before_the_step():
    assert openai.checkpoint_metrics(10, TRAIN, VAL) == {
        "step": 10,
        "train_loss": 1.25,
        "train_mean_token_accuracy": 0.5,
        "valid_loss": 1.5,
        "valid_mean_token_accuracy": 0.4,
        "full_valid_loss": 1.5,
        "full_valid_mean_token_accuracy": 0.4,
    }
    assert openai.checkpoint_metrics(5, {}, {}) == {"step": 5}
    # a validation row from a later step (a run replayed after a resume) is not this checkpoint's
    later = {**VAL, "step": 20}
    assert openai.checkpoint_metrics(15, TRAIN, later) == {
        "step": 15,
        "train_loss": 1.25,
        "train_mean_token_accuracy": 0.5,
    }


def test_results_csv_from_a_runs_metrics_jsonl(tmp_path):
    from tuneforge.rundir import RunDir

    rows = [
        {"step": 1, "loss": 2.0, "token_accuracy": 0.25, "lr": 1e-4, "tokens_per_s": 10.0},
        {"step": 2, "loss": 1.5, "lr": 1e-4, "tokens_per_s": 10.0},  # no accuracy: an empty cell
        {"step": 2, "epoch": 1.0, "val_loss": 1.75, "val_token_accuracy": 0.5, "val_ppl": 5.75},
        {"step": 3, "epoch": 1.5, "val_loss": 1.625},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)) + '{"cut')
    data = openai.results_csv(RunDir(tmp_path).read_metrics())
    assert data.decode() == (
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n"
        "1,2.0,0.25,,\n"
        "2,1.5,,1.75,0.5\n"
        "3,,,1.625,\n"
    )
    assert openai.results_csv([]) == b"step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n"


@pytest.mark.parametrize(("n_train", "batch"), [(10, 8), (1_999, 8), (2_000, 16), (19_999, 16), (20_000, 32)])
def test_auto_batch_size_and_auto_epochs_and_rate_left_to_the_library(n_train, batch):
    assert openai.auto_batch_size(n_train) == batch
    assert openai.resolve({"n_epochs": "auto"}, n_train) == {
        "n_epochs": "auto",  # train.epochs "auto": the library decides from the training split
        "batch_size": batch,
        "learning_rate_multiplier": "auto",  # train.learning_rate "auto"
    }


def test_resolve_keeps_given_numbers_and_dpo_beta():
    hp = {"n_epochs": "2", "batch_size": 4, "learning_rate_multiplier": 0.5}
    assert openai.resolve(hp, 100) == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}
    assert openai.resolve({"beta": "auto"}, 100)["beta"] == openai.DEFAULT_BETA == 0.1
    assert openai.resolve({"beta": 0.3}, 100)["beta"] == 0.3
    assert "beta" not in openai.resolve({}, 100)


def test_the_librarys_resolved_values_become_job_hyperparameters():
    resolved = {
        "train.learning_rate": {"value": 0.0014, "why": "width 64", "prior": 0.0014},
        "train.epochs": {"value": 12.0, "why": "few examples"},
        "train.early_stopping_patience": {"value": 3, "why": "a validation split"},
    }
    assert openai.reported(resolved, 2e-4) == {
        "n_epochs": (12, "few examples"),
        "learning_rate_multiplier": (7.0, "width 64"),
    }
    assert openai.reported({"train.epochs": {"value": 0.625, "why": ""}}, 2e-4) == {"n_epochs": (0.62, "")}
    assert openai.reported({"train.learning_rate": {"value": 1e-4 / 3}}, 2e-4) == {
        "learning_rate_multiplier": (0.167, "")
    }
    assert openai.reported({}, 2e-4) == {}


def test_the_base_learning_rate_is_the_adapters_or_the_full_one(tmp_path):
    settings = Settings(data_dir=tmp_path, lora_learning_rate=1e-2, full_learning_rate=3e-3)
    for adapter in ("lora", "dora", "ia3", "prefix"):
        assert openai.base_learning_rate(adapter, settings) == 1e-2
    for whole in ("full", "freeze"):
        assert openai.base_learning_rate(whole, settings) == 3e-3


def _cfg(tmp_path, training_type: str = "lora", **kw):
    values = dict(
        run_dir=tmp_path / "run",
        base_source="tiny",
        train_path=tmp_path / "t.jsonl",
        validation_path=None,
        training_type=training_type,
        resolved={"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5},
        extras={},
        seed=3,
        base_learning_rate=2e-4,
        max_length=128,
    )
    return openai.run_config(**{**values, **kw})


def test_run_config_of_a_job(tmp_path):
    cfg = _cfg(tmp_path)
    assert (
        cfg.train.epochs == 2 and cfg.train.batch_size == 8 and cfg.train.learning_rate == pytest.approx(1e-4)
    )
    assert cfg.seed == 3 and cfg.data.max_length == 128 and cfg.data.validation is None
    assert cfg.data.split.test == 0.0 and cfg.data.clean.dedupe == "none"  # validation: see below
    # LoRA keeps its method's own defaults
    assert (cfg.method.r, cfg.method.alpha, cfg.method.dropout, cfg.method.target_modules) == (
        16,
        32,
        0.0,
        "all-linear",
    )
    tuned = _cfg(tmp_path, extras={"lora_rank": 4, "lora_alpha": 8, "save_every": 5, "max_steps": None})
    assert tuned.method.r == 4 and tuned.method.alpha == 8 and tuned.train.save_every == 5
    dpo = _cfg(
        tmp_path,
        method_type="dpo",
        resolved={"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 1.0, "beta": 0.25},
    )
    assert dpo.data.format == "preference" and dpo.objective.name == "dpo" and dpo.objective.beta == 0.25
    kto = _cfg(
        tmp_path,
        method_type="kto",
        resolved={
            "n_epochs": 1,
            "batch_size": 8,
            "learning_rate_multiplier": 1.0,
            "beta": 0.2,
            "desirable_weight": 1.0,
            "undesirable_weight": 1.5,
        },
    )
    assert (kto.objective.name, kto.objective.beta, kto.objective.undesirable_weight) == ("kto", 0.2, 1.5)


def test_auto_epochs_and_rate_reach_the_library_as_auto_also_once_reported(tmp_path):
    auto = _cfg(tmp_path, resolved={"n_epochs": "auto", "batch_size": 8, "learning_rate_multiplier": "auto"})
    assert auto.train.epochs == "auto" and auto.train.learning_rate == "auto"
    # a later attempt, after the sink reported numbers: the run keeps the config it started with
    later = _cfg(
        tmp_path,
        resolved={"n_epochs": 12, "batch_size": 8, "learning_rate_multiplier": 7.0},
        requested={"n_epochs": "auto", "learning_rate_multiplier": "auto"},
    )
    assert later.fingerprint() == auto.fingerprint()
    mixed = _cfg(
        tmp_path,
        resolved={"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": "auto"},
        requested={"n_epochs": 2},
    )
    assert mixed.train.epochs == 2 and mixed.train.learning_rate == "auto"


def test_a_job_without_validation_file_holds_out_a_seeded_stratified_split(tmp_path):
    split = _cfg(tmp_path).data.split  # validation_split "auto" by default
    assert (split.validation, split.min_validation, split.max_validation) == (0.1, 5, 1000)
    assert split.test == 0.0 and split.stratify == "auto"
    assert _cfg(tmp_path, extras={"validation_split": "auto"}).data.split == split
    given = _cfg(tmp_path, extras={"validation_split": 0.25}).data.split
    assert (given.validation, given.min_validation, given.max_validation) == (0.25, 0, None)
    assert _cfg(tmp_path, extras={"validation_split": 0}).data.split.validation == 0.0
    with_file = _cfg(tmp_path, validation_path=tmp_path / "v.jsonl", extras={"validation_split": 0.3})
    assert with_file.data.split.validation == 0.0 and with_file.data.validation == str(tmp_path / "v.jsonl")


def test_held_out_records_are_the_users_own_lines(tmp_path):
    from tuneforge.data.schema import Example, Message, Source

    train = tmp_path / "t.jsonl"
    lines = [json.dumps({"messages": [{"role": "user", "content": f"q{i} \u2028"}]}) for i in range(4)]
    train.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")  # a blank line: line numbers shift

    def ex(line: int | None) -> Example:
        return Example("chat", [Message("user", "x")], source=Source(str(train), 0, line))

    assert openai.held_out_records(train, [ex(1), ex(4)]).decode() == f"{lines[0]}\n{lines[2]}\n"
    assert openai.held_out_records(train, [ex(None)]).decode() == json.dumps(ex(None).to_dict()) + "\n"
