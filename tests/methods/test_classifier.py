"""The classification recipe on tiny models: an encoder (BERT-shaped, MiniLM's tokenizer) and the tiny decoder.
It learns (loss falls, accuracy beats the majority class), reports accuracy, per-class P/R/F1 and a confusion
matrix, and the saved classifier loads back with the same predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import WORDS, classifier_config
from tuneforge import api


def _cfg(model_dir: Path, tmp_path: Path, *overrides: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return classifier_config(model_dir, tmp_path, tmp_path / "run", *overrides)


@pytest.mark.parametrize(
    "model, overrides",
    [
        ("encoder", ["train.learning_rate=1e-2"]),
        ("decoder", ["method.adapter=lora", "method.r=8", "train.learning_rate=1e-2"]),
    ],
)
def test_classifier_learns_reports_and_reloads(
    model, overrides, tiny_encoder_dir, tiny_wide_init_dir, tmp_path
):
    from tuneforge.recipes.runs import load_run_classifier

    model_dir = tiny_encoder_dir if model == "encoder" else tiny_wide_init_dir
    cfg = _cfg(model_dir, tmp_path, *overrides)
    summary = api.finetune(cfg, show=False)
    run = tmp_path / "run"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    loss = [r["loss"] for r in rows if "loss" in r]
    print(model, loss[:3], loss[-3:])
    assert sum(loss[-3:]) / 3 < 0.6 * sum(loss[:3]) / 3, loss
    report = json.loads((run / "report.json").read_text())
    majority, tuned = report["variants"][0]["metrics"], report["variants"][1]["metrics"]
    print(model, majority["accuracy"], tuned["accuracy"])
    assert tuned["accuracy"] > majority["accuracy"] + 0.3
    assert set(tuned["per_class"]) == set(WORDS)
    assert {"precision", "recall", "f1", "support"} <= set(tuned["per_class"]["positive"])
    cm = tuned["confusion"]
    assert cm["labels"] == sorted(WORDS) and sum(map(sum, cm["matrix"])) == report["n_test"]
    html = (run / "report.html").read_text()
    assert "Confusion" in html and "Per class" in html
    assert summary["report"]["n_test"] == report["n_test"]
    artifact = run / "model"
    assert (artifact / "labels.json").is_file()
    if "method.adapter=lora" in overrides:  # a standard PEFT adapter, head included
        assert (artifact / "adapter_config.json").is_file()
    # reloaded from the run folder, the classifier gives the reported predictions
    clf, tok, labels = load_run_classifier(run)
    clf.eval()
    test = [json.loads(x) for x in (run / "data" / "test.jsonl").read_text().splitlines()]
    enc = tok([t["text"] for t in test], return_tensors="pt", padding=True)
    with torch.no_grad():
        pred = clf(**enc).logits.argmax(-1).tolist()
    acc = sum(labels[p] == t["label"] for p, t in zip(pred, test, strict=True)) / len(test)
    assert acc == pytest.approx(tuned["accuracy"], abs=1e-6)
    # `tuneforge eval RUN` scores a classifier run with its own evaluation
    again = api.compare_models(str(run), None, show=False)
    assert again["variants"][1]["metrics"]["accuracy"] == pytest.approx(tuned["accuracy"], abs=1e-6)


def test_classifier_backbone_is_the_saved_one(tiny_model_dir, tmp_path):
    """A tied decoder written by save_model_folder (as the GGUF conversion writes it) gives a classification head
    its trained embeddings; a folder that lacks them is refused instead of training from random embeddings."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.errors import ModelError
    from tuneforge.models.classifier import load_classifier
    from tuneforge.models.load import save_model_folder

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    out = tmp_path / "converted"
    save_model_folder(lm, out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    weights = out / "model.safetensors"
    state = load_file(weights)
    assert "model.embed_tokens.weight" in state and "lm_head.weight" not in state
    clf, _ = load_classifier(str(out), ["a", "b"])
    assert torch.equal(clf.model.embed_tokens.weight, lm.model.embed_tokens.weight)
    again = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(again.lm_head.weight, lm.lm_head.weight)

    state["lm_head.weight"] = state.pop("model.embed_tokens.weight")  # the layout conversions used to write
    save_file(state, str(weights))
    with pytest.raises(ModelError, match="embed_tokens"):
        load_classifier(str(out), ["a", "b"])


def test_classifier_runs_are_tracked_like_every_run(tiny_encoder_dir, tmp_path):
    """The one training loop tracks classifier runs too: their metrics land in TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(tiny_encoder_dir, tmp_path, "train.learning_rate=1e-2", "tracking.backends=[tensorboard]")
    api.finetune(cfg, evaluate=False, show=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    tb = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in tb] == [s for s, _ in losses]
    assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(tb, losses, strict=True))
    assert [e.step for e in acc.Scalars("val/val_accuracy")] == [r["step"] for r in rows if "val_loss" in r]
    assert "train/accuracy" in acc.Tags()["scalars"]


def test_classifier_resumed_after_kill_9_ends_where_an_uninterrupted_run_ends(tiny_encoder_dir, tmp_path):
    import subprocess

    from safetensors.torch import load_file

    from tests.conftest import kill_mid_run

    # One thread in both processes: float sums differ in their last bits between thread counts.
    common = ["train.max_steps=300", "train.eval_every=50", "train.save_every=5", "train.learning_rate=1e-2"]
    common.append("train.num_threads=1")
    api.finetune(_cfg(tiny_encoder_dir, tmp_path / "a", *common), evaluate=False, show=False)
    cmd, env = kill_mid_run(
        classifier_config(tiny_encoder_dir, tmp_path, tmp_path / "run", *common), tmp_path, 20
    )
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Resumed from step-" in r.stderr
    ref = [json.loads(x) for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in got] == [x["step"] for x in ref]
    for ra, rb in zip(ref, got, strict=True):
        for key in ("loss", "val_loss", "val_accuracy"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)
    wa = load_file(str(tmp_path / "a" / "run" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_the_estimate_refuses_a_classifier_config_with_what_to_do(tiny_encoder_dir, tmp_path):
    from tuneforge.errors import ConfigError
    from tuneforge.recipes.run import probe

    with (
        pytest.raises(ConfigError, match="trains a classifier head") as e,
        probe(_cfg(tiny_encoder_dir, tmp_path)),
    ):
        pass
    assert "language-model method" in e.value.fix
    assert not (tmp_path / "run").exists()  # nothing was set up
