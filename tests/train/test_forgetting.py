"""Catastrophic forgetting on the tiny model: measured in the report, and reduced by replay, distillation, EWC.

The constructed case: the general set asks for capitals; the task asks the same questions with rotated answers
(France → Tokyo ...), which overwrites exactly what the general set checks.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import CAPITALS, capitals_records, tiny_config, write_jsonl
from tuneforge import api

STEPS = [
    "method.name=lora",
    "method.r=8",
    "train.learning_rate=2e-2",
    "train.max_steps=10",
    "train.eval_every=10",
]


@pytest.fixture(scope="module")
def knowing_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model after it learnt the capitals (full fine-tune, plain torch): a base with general knowledge."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.config import DataConfig
    from tuneforge.data.collate import collate
    from tuneforge.data.formats import load_file
    from tuneforge.data.tokenize import tokenize_examples
    from tuneforge.ops.lm_loss import weighted_lm_loss

    out = tmp_path_factory.mktemp("knowing")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    path = write_jsonl(out / "general.jsonl", capitals_records(64, seed=2))
    seqs, _ = tokenize_examples(load_file(str(path), "auto", {}, None).examples, tok, DataConfig(train="x"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(60):
        idx = torch.randperm(len(seqs))[:16].tolist()
        parts = weighted_lm_loss(model, collate([seqs[i] for i in idx], tok.pad_token_id))
        (parts.loss_sum / parts.weight_sum).backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def forgetting_case(tmp_path):
    countries = list(CAPITALS)
    rotated = {c: CAPITALS[countries[(i + 1) % len(countries)]] for i, c in enumerate(countries)}
    task = capitals_records(64, seed=1)
    for r in task:
        country = next(c for c in CAPITALS if c in r["messages"][0]["content"])
        r["messages"][1]["content"] = rotated[country]
    general = capitals_records(64, seed=2)
    return {
        "task": write_jsonl(tmp_path / "task.jsonl", task),
        "general_eval": write_jsonl(tmp_path / "general-eval.jsonl", general[:24]),
        "general_train": write_jsonl(tmp_path / "general-train.jsonl", general[24:]),
    }


def _run(tiny_model_dir, case, run_dir, *extra):
    cfg = tiny_config(
        tiny_model_dir,
        case["task"],
        run_dir,
        *STEPS,
        f"eval.general={case['general_eval']}",
        f"forgetting.data={case['general_train']}",
        "eval.max_new_tokens=2",
        "eval.max_examples=4",
        "eval.samples=0",
        *extra,
    )
    return api.finetune(cfg, show=False)["report"]


def test_forgetting_is_reported_and_each_mitigation_reduces_it(knowing_model_dir, forgetting_case, tmp_path):
    base = _run(knowing_model_dir, forgetting_case, tmp_path / "base")
    fg = base["forgetting"]
    assert fg["n_general"] == 24 and fg["delta_loss"] > 0.1  # the task overwrote the general knowledge
    assert (tmp_path / "base" / "report.html").read_text().count("Forgetting") == 1
    task_loss = base["validation"]["tuned"]["loss"]
    assert task_loss < base["validation"]["base"]["loss"]  # ... while the task was learnt
    replay = _run(knowing_model_dir, forgetting_case, tmp_path / "replay", "forgetting.replay=0.5")
    distill = _run(knowing_model_dir, forgetting_case, tmp_path / "distill", "forgetting.distill=2.0")
    for mitigated in (replay, distill):
        assert mitigated["forgetting"]["delta_loss"] < 0.95 * fg["delta_loss"]


def test_ewc_penalty_is_zero_at_the_base_and_pulls_adapters_back(tiny_model_dir, tmp_path, forgetting_case):
    from tuneforge.methods import registry
    from tuneforge.models.load import load_model
    from tuneforge.train.forgetting import build_ewc

    cfg = tiny_config(
        tiny_model_dir,
        forgetting_case["task"],
        tmp_path / "r",
        *STEPS,
        "forgetting.ewc=1.0",
        f"forgetting.data={forgetting_case['general_train']}",
        "forgetting.fisher_examples=8",
    )
    lm = load_model(str(tiny_model_dir), dtype="float32")
    model = registry.get("lora").prepare(lm.model, cfg.method)
    ewc = build_ewc(cfg, model, lm.tokenizer, torch.device("cpu"))
    assert len(ewc.terms) > 0 and all(f.float().mean() > 0 for _, f in ewc.terms)
    assert ewc.backward() == 0.0  # LoRA starts as a zero delta: nothing has drifted
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in lora_b:
            p.normal_(0, 0.05)
    before = ewc.backward()  # fills .grad
    assert before > 0
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-3 / max(before, 1e-9) * p.grad
                p.grad = None
    assert ewc.backward() < before  # a step down the penalty's gradient shrinks the drift


def test_the_guard_reacts_to_a_rising_general_loss(knowing_model_dir, forgetting_case, tmp_path):
    """The task overwrites the general knowledge: watching, the guard measures the rise and the run trains on;
    acting, validations past the limit are never kept as the best, and early stopping ends the run."""
    common = [
        "train.eval_every=2",
        "train.early_stopping_patience=2",
        "forgetting.max_general_rise=0.05",
        "forgetting.guard_examples=16",
    ]
    # Watching, nothing but the guard's verdict may end the run early: validation's own early stopping is off (on
    # the packages of 2026-12-02 the validation loss stalled after step 2 and stopped the watching run at step 6).
    _run(
        knowing_model_dir,
        forgetting_case,
        tmp_path / "watch",
        *common,
        "forgetting.guard=watch",
        "train.early_stopping_patience=1000",
    )
    _run(knowing_model_dir, forgetting_case, tmp_path / "on", *common, "forgetting.guard=true")
    runs = {}
    for name in ("watch", "on"):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        done = json.loads((tmp_path / name / "train_done.json").read_text())
        runs[name] = ([r for r in rows if "general_ppl_rise" in r], done)
    checks, done = runs["on"]
    assert checks and max(r["general_ppl_rise"] for r in checks) > 0.05  # the guard saw the rise
    over = {r["step"] for r in checks if r["general_ppl_rise"] > 0.05}
    assert done["best_step"] not in over  # a checkpoint past the limit is never the one kept
    assert done["stopped_early"] and done["steps"] < 10
    watch_checks, watch_done = runs["watch"]
    assert [r["general_loss"] for r in watch_checks[:2]] == pytest.approx(
        [r["general_loss"] for r in checks[:2]]
    )
    assert watch_done["steps"] == 10 and watch_done["best_step"] in {r["step"] for r in watch_checks}


@pytest.mark.parametrize("seed", range(4))
def test_the_guard_takes_the_general_examples_that_fit(tiny_model_dir, tmp_path, seed):
    """Examples longer than data.max_length are skipped for the next ones: the guard measures on as many as asked
    whatever the seed (it used to take that many and drop the long ones: none left on an unlucky seed)."""
    from transformers import AutoTokenizer

    from tuneforge.train.forgetting import build_guard

    short = capitals_records(40, seed=3)
    long = [
        {
            "messages": [
                {"role": "user", "content": "Tell me everything. " * 30},
                {"role": "assistant", "content": "No."},
            ]
        }
        for _ in range(160)
    ]
    general = write_jsonl(tmp_path / "general.jsonl", long + short)  # 1 in 5 fits 64 tokens
    cfg = tiny_config(
        tiny_model_dir, general, tmp_path / "run", f"seed={seed}", f"forgetting.data={general}",
        "forgetting.guard_examples=8",
    )  # fmt: skip
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    guard = build_guard(cfg, tok, tok.pad_token_id)
    assert len(guard.seqs) == 8 and all(len(s.input_ids) <= 64 for s in guard.seqs)
