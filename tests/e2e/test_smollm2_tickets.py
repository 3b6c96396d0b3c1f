"""The real thing: SmolLM2-135M-Instruct fine-tuned with LoRA on the bundled tickets, through the README's commands.

A shortened version of the demo (30 optimizer steps, 40 test tickets) that takes about two and a half minutes on
a 2-core CPU and must show the tuned model beating the base model on held-out data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
TICKET = (
    "Subject: Charged twice\n\nHi, my card was charged twice for order NW-10293 this morning, $129 each time. "
    "Please refund one of them.\nThanks, Ana"
)


def tuneforge(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


# Forgetting is measured on the real model here too, but on 16 of the 120 bundled general records: at full size
# it was the most expensive part of the run (every record through base and tuned, up to 512 tokens each), and no
# test below reads more than that it was measured. tests/train/test_forgetting.py covers the measurement itself.
GENERAL_EXAMPLES = 16


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smol_dir):
    from tuneforge.data.general import general_path

    root = tmp_path_factory.mktemp("e2e")
    general = root / "general-eval-16.jsonl"
    lines = general_path("bundled", "eval").read_text().splitlines(keepends=True)
    general.write_text("".join(lines[:GENERAL_EXAMPLES]))
    out = root / "tickets"
    tuneforge(
        "train",
        "examples/tickets-lora.yaml",
        "--set",
        f"run_dir={out}",
        "--set",
        "train.max_steps=30",
        "--set",
        "train.learning_rate=2e-3",
        "--set",
        # one validation, at the last step (the demo's own eval_every): a second one at step 15 cost a full pass
        # over the validation split and the guard's general set, and changed no loss, weight or score of the run
        "train.eval_every=30",
        "--set",
        "eval.max_examples=40",
        "--set",
        "eval.few_shot=0",
        "--set",
        f"eval.general={general}",
    )
    return out


def test_tuned_model_beats_the_base_model_on_held_out_tickets(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    base = next(v for v in report["variants"] if v["key"] == "base")["metrics"]
    tuned = next(v for v in report["variants"] if v["key"] == "tuned")["metrics"]
    assert report["n_test"] == 40
    assert tuned["json_valid"] >= 90  # it learned the output format ...
    assert tuned["fields"]["queue"]["strict"]["accuracy"] >= 0.5  # ... and the task
    assert tuned["exact_match"] >= base["exact_match"] + 10
    assert tuned["fields"]["queue"]["lenient"]["accuracy"] > base["fields"]["queue"]["lenient"]["accuracy"]
    assert report["validation"]["tuned"]["loss"] < report["validation"]["base"]["loss"]
    # the tuned model stops after its answer: the end-of-turn token was trained although it is also the pad token
    tuned_v = next(v for v in report["variants"] if v["key"] == "tuned")
    assert tuned_v["completion_tokens_mean"] < 24
    assert report["forgetting"]["n_general"] == GENERAL_EXAMPLES  # forgetting was measured on the real model


def test_run_folder_holds_every_artifact(run_dir):
    for name in (
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer.json",
        "config.yaml",
        "metrics.jsonl",
        "loss_curve.png",
        "report.json",
        "report.html",
    ):
        assert (run_dir / name).is_file(), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in rows) and all("step" in r for r in rows)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]


def test_chat_with_the_tuned_run_answers_in_the_trained_format(run_dir):
    r = tuneforge("chat", str(run_dir), "--prompt", TICKET, "--max-new-tokens", "40")
    answer = json.loads(r.stdout.strip())  # the run's system prompt is applied; the answer is JSON and stops
    assert set(answer) == {"queue", "priority"}


def test_compare_command_reuses_the_base_weights(run_dir, tmp_path):
    tuneforge(
        "compare",
        "smollm2-135m",
        str(run_dir),
        "--max-examples",
        "8",
        "--few-shot",
        "0",
        # The claim is the pair and the shared weights; answers as long as the run's (eval.max_new_tokens=24),
        # and no second forgetting measurement, which the training run's report already made.
        "--max-new-tokens",
        "24",
        "--general",
        "none",
        "--out",
        str(tmp_path),
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert [v["key"] for v in report["variants"]] == ["base", "tuned"] and report["n_test"] == 8


def test_the_tuned_model_runs_in_llama_cpp_and_ollama_as_trained(run_dir, tmp_path):
    """`tuneforge export --to ollama`: a q8_0 GGUF that llama.cpp tokenizes like the run, whose answers stop by
    themselves, with a Modelfile carrying the template, the stop tokens and SmolLM2's default system prompt."""
    pytest.importorskip("llama_cpp")
    from tuneforge.export.ollama import parse_modelfile

    out = tmp_path / "ollama"
    r = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "export", str(run_dir), "--to", "ollama", "--limit", "12"]
        + ["--out", str(out)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode in (0, 1), r.stderr[-3000:]  # 1: the check failed, which the asserts below explain
    result = json.loads((out / "export.json").read_text())
    v = result["verification"]
    assert v["prompts"] == 12 and v["tokenization_identical"] == 1.0, v["differences"]
    assert v["answers_stopped"] == 1.0 and v["answers_equal"] >= 0.75, v["differences"]
    assert v["task"]["exact_match_export"] >= v["task"]["exact_match_tuned"] - 20
    mf = parse_modelfile((out / "Modelfile").read_text())
    assert (out / mf["FROM"].removeprefix("./")).is_file()
    assert ("stop", "<|im_end|>") in mf["PARAMETER"] and "<|im_start|>assistant" in mf["TEMPLATE"]
    assert "SmolLM" in (mf["SYSTEM"] or "")
