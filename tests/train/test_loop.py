"""The training recipe on a tiny random model: it learns, it saves what it should, it resumes exactly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import kill_mid_run, tiny_config
from tuneforge import api
from tuneforge.errors import RunDirError
from tuneforge.recipes.lm import FineTune
from tuneforge.recipes.run import train as run_training

FAST = ["train.learning_rate=1e-2", "train.epochs=12"]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_full_finetune_learns_and_writes_the_run_folder(tiny_model_dir, capitals_file, tmp_path):
    cfg = tiny_config(tiny_model_dir, capitals_file, tmp_path / "run", *FAST)
    summary = api.finetune(cfg, show=False)
    run = tmp_path / "run"
    rows = _metrics(run)
    train_loss = [r["loss"] for r in rows if "loss" in r]
    val_loss = [r["val_loss"] for r in rows if "val_loss" in r]
    assert train_loss[-1] < 0.5 * train_loss[0]
    assert val_loss[-1] < val_loss[0]
    assert {"step", "loss", "lr", "tokens_per_s"} <= set(rows[0])
    report = summary["report"]
    base, tuned = report["variants"][0], report["variants"][-1]
    assert tuned["metrics"]["exact_match"] > base["metrics"]["exact_match"]
    assert report["validation"]["tuned"]["loss"] < report["validation"]["base"]["loss"]
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "loss_curve.png",
        "report.json",
        "report.html",
        "model/config.json",
        "model/model.safetensors",
        "data/train.jsonl",
        "data/test.jsonl",
        "data/rejects.jsonl",
    ):
        assert (run / name).exists(), name
    assert json.loads((run / "report.json").read_text())["n_test"] == report["n_test"]


def test_lora_saves_a_standard_peft_adapter_that_reloads(tiny_model_dir, capitals_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneforge.eval.generate import SamplingParams, generate
    from tuneforge.recipes.runs import load_any as load_model

    cfg = tiny_config(
        tiny_model_dir,
        capitals_file,
        tmp_path / "run",
        "method.name=lora",
        "method.r=8",
        "train.learning_rate=2e-2",
        "train.epochs=6",
    )
    summary = api.finetune(cfg, show=False)
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "run" / "model").exists()
    # peft itself loads it onto the base model
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    assert sum(p.numel() for n, p in plain.named_parameters() if "lora_" in n) > 0
    # and tuneforge's loader gives the same answers as the model evaluated right after training
    lm = load_model(str(tmp_path / "run"))
    assert lm.method == "lora"
    prompts = [
        lm.tokenizer.apply_chat_template(
            [{"role": "user", "content": "Capital of Peru?"}], tokenize=False, add_generation_prompt=True
        )
    ]
    out = generate(lm, prompts, SamplingParams(max_new_tokens=5))[0]
    tuned_answers = summary["report"]["answers"]
    assert out.text is not None and tuned_answers


def test_freeze_keeps_bottom_layers_and_embeddings(tiny_model_dir, capitals_file, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(
        tiny_model_dir,
        capitals_file,
        tmp_path / "run",
        "method.name=freeze",
        "method.freeze_layers=1",
        "train.epochs=2",
    )
    api.finetune(cfg, evaluate=False, show=False)
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model").state_dict()
    assert torch.equal(
        before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"]
    )
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert not torch.equal(
        before["model.layers.1.mlp.up_proj.weight"], after["model.layers.1.mlp.up_proj.weight"]
    )


def test_resume_ends_where_an_uninterrupted_run_ends(tiny_model_dir, capitals_file, tmp_path):
    common = [
        "method.name=lora",
        "method.dropout=0.1",
        "train.max_steps=12",
        "train.eval_every=4",
        "train.learning_rate=1e-2",
    ]
    straight = tiny_config(tiny_model_dir, capitals_file, tmp_path / "a", *common)
    run_training(straight)

    cfg = tiny_config(tiny_model_dir, capitals_file, tmp_path / "b", *common)
    steps = {"n": 0}

    def stop_after_6() -> bool:  # a pause request, as the service sends
        steps["n"] += 1
        return steps["n"] > 6

    res, _ = run_training(cfg, should_stop=stop_after_6)
    assert res.stopped_by_request and res.steps == 6
    res2, _ = run_training(cfg, resume=True)
    assert res2.steps == 12
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "val_loss"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)
    wa = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "adapter" / "adapter_model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_resume_after_kill_9(tiny_model_dir, capitals_file, tmp_path):
    """A real crash: the process is killed with SIGKILL mid-run, then resumed from the CLI."""
    common = ["train.max_steps=60", "train.eval_every=10", "train.save_every=3", "train.learning_rate=5e-3"]
    ref = tiny_config(tiny_model_dir, capitals_file, tmp_path / "ref", *common)
    run_training(ref)

    cmd, env = kill_mid_run(
        tiny_config(tiny_model_dir, capitals_file, tmp_path / "run", *common), tmp_path, 9
    )
    ckpts = tmp_path / "run" / "checkpoints"
    # a half-written checkpoint as a crash mid-save would leave it: must be ignored and removed
    (ckpts / ".tmp-step-000999-1").mkdir()
    (ckpts / "step-000998").mkdir()
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Resumed from step-" in r.stderr
    assert not (ckpts / ".tmp-step-000999-1").exists() and not (ckpts / "step-000998").exists()
    a, b = _metrics(tmp_path / "ref"), _metrics(tmp_path / "run")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    last_a = [r for r in a if "loss" in r][-1]
    last_b = [r for r in b if "loss" in r][-1]
    assert last_b["loss"] == pytest.approx(last_a["loss"], rel=1e-5)
    wa = load_file(str(tmp_path / "ref" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_early_stopping_keeps_the_best_checkpoint(tiny_model_dir, capitals_file, tmp_path):
    # A learning rate so small that validation loss cannot improve after the first evaluation.
    cfg = tiny_config(
        tiny_model_dir,
        capitals_file,
        tmp_path / "run",
        "train.learning_rate=1e-12",
        "train.eval_every=1",
        "train.early_stopping_patience=2",
        "train.max_steps=50",
    )
    res, _ = run_training(cfg)
    assert res.stopped_early
    assert res.steps == 3 and res.best_step == 1
    assert json.loads((tmp_path / "run" / "train_done.json").read_text())["best_step"] == 1


def test_run_folder_guard(tiny_model_dir, capitals_file, tmp_path):
    cfg = tiny_config(tiny_model_dir, capitals_file, tmp_path / "run", "train.max_steps=2")
    run_training(cfg)
    with pytest.raises(RunDirError, match="already holds this run"):
        FineTune(cfg).setup()
    other = tiny_config(
        tiny_model_dir, capitals_file, tmp_path / "run", "train.max_steps=2", "train.learning_rate=0.5"
    )
    with pytest.raises(RunDirError, match=r"different run \(differs in: train.learning_rate\)"):
        FineTune(other).setup()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    junk = tiny_config(tiny_model_dir, capitals_file, tmp_path / "junk", "train.max_steps=2")
    with pytest.raises(RunDirError, match="holds no tuneforge run"):
        FineTune(junk).setup()


def test_cpu_training_keeps_freed_memory_unless_the_environment_sets_malloc(monkeypatch):
    import platform

    from tuneforge.train import runtime

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576")
    assert runtime.keep_freed_memory() is False  # the user's own malloc settings win
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert runtime.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert runtime.keep_freed_memory() is True  # mallopt accepted both settings
