"""Tune from feedback, gated, on the tiny model: a deployment's current version (a real run) and stored answers
with thumbs; the candidate continues its adapter with KTO, is compared with it on the held-out split, and is added
as a canary only when the gate passes — a refusal leaves the arms alone and is recorded in the history."""

from __future__ import annotations

import json

import pytest

from tests.conftest import capitals_records, tiny_config, write_jsonl
from tests.jobs.service_fixtures import service_settings
from tuneforge import api
from tuneforge.experiments.feedback_tune import choose_objective, gate
from tuneforge.jobs import feedback as fb
from tuneforge.jobs import store
from tuneforge.jobs.store import FineTunedModel
from tuneforge.recipes.run import finetune

pytestmark = pytest.mark.timeout(600)
V1 = "ft:tiny:alice:v1"


def test_gate_rules():
    cur = {"metric": "exact match (strict)", "value": 50.0, "general_perplexity": 10.0}
    assert gate(cur, {**cur, "value": 49.0}, 2.0, 10.0)["passed"]
    worse = gate(cur, {**cur, "value": 45.0}, 2.0, 10.0)
    assert not worse["passed"] and "5.0 points below" in worse["reasons"][0]
    forgot = gate(cur, {**cur, "value": 60.0, "general_perplexity": 12.0}, 2.0, 10.0)
    assert not forgot["passed"] and forgot["general_perplexity_change_pct"] == pytest.approx(20.0)


def test_objective_choice(tmp_path):
    kto, dpo = tmp_path / "kto.jsonl", tmp_path / "dpo.jsonl"
    kto.write_text("{}\n" * 5)
    dpo.write_text("{}\n" * 3)
    assert choose_objective({"kto": kto, "dpo": dpo}) == "kto"  # too few pairs for DPO
    dpo.write_text("{}\n" * 20)
    assert choose_objective({"kto": kto, "dpo": dpo}) == "dpo"
    with pytest.raises(Exception, match="nothing to train on"):
        choose_objective({})


def test_tune_from_feedback_adds_a_canary_only_when_the_gate_passes(tiny_base, tmp_path):
    data = write_jsonl(tmp_path / "caps.jsonl", capitals_records(60))
    cfg = tiny_config(
        tiny_base,
        data,
        tmp_path / "v1",
        "method.name=lora",
        "method.r=4",
        "train.learning_rate=1e-2",
        "train.max_steps=10",
        "data.split.test=0.2",
        "eval.max_new_tokens=6",
        "eval.few_shot=0",
        "eval.samples=0",
    )
    finetune(cfg, evaluate=False)
    settings = service_settings(tmp_path / "data", tiny_base)
    settings.ensure_dirs()
    sessions = store.session_factory(store.engine_for(settings))
    store.init_db(store.engine_for(settings))
    test = [json.loads(x) for x in (tmp_path / "v1" / "data" / "test.jsonl").read_text().splitlines()]
    with store.transaction(sessions) as s:
        s.add(
            FineTunedModel(
                id=V1,
                owner="alice",
                base="tiny",
                job_id="-",
                run_dir=str(tmp_path / "v1"),
                training_type="lora",
                created_at=0,
            )
        )
        s.add(
            fb.Deployment(
                owner="alice",
                name="caps",
                arms=[{"model": V1, "weight": 1.0}],
                shadow=None,
                store=True,
                history=[],
                created_at=0,
                updated_at=0,
            )
        )
        for i, ex in enumerate(test * 2):  # each held-out question answered twice: once right, once wrong
            prompt = [
                {"role": m["role"], "content": m["content"]}
                for m in ex["messages"]
                if m["role"] != "assistant"
            ]
            right = next(m["content"] for m in ex["messages"] if m["role"] == "assistant")
            text = right if i % 2 == 0 else "I do not know."
            s.add(
                fb.StoredCompletion(
                    id=f"c{i}",
                    owner="alice",
                    model=V1,
                    requested="caps",
                    deployment="caps",
                    messages=prompt,
                    params={},
                    choices=[{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    usage={},
                    created_at=0,
                )
            )
            fb.put_feedback(s, "alice", f"c{i}", "judge", thumbs="up" if i % 2 == 0 else "down")
    quick = ["train.max_steps=3", "train.eval_every=3"]

    refused = api.tune_from_feedback(
        settings, "alice", "caps", tmp_path / "no", tolerance=-1000.0, sets=quick
    )
    assert not refused["passed"] and refused["objective"] == "kto" and refused["held_out"] == len(test)
    assert json.loads((tmp_path / "no" / "gate.json").read_text())["passed"] is False
    with sessions() as s:
        d = fb.get_deployment(s, "alice", "caps")
        assert (
            d.arms == [{"model": V1, "weight": 1.0}] and d.history[-1]["why"] == "gate refused the candidate"
        )

    passed = api.tune_from_feedback(
        settings,
        "alice",
        "caps",
        tmp_path / "yes",
        tolerance=1000.0,
        forgetting_tolerance=1e9,
        canary=0.2,
        sets=quick,
    )
    assert passed["passed"] and passed["current_model"] == V1
    with sessions() as s:
        d = fb.get_deployment(s, "alice", "caps")
        assert [a["model"] for a in d.arms] == [V1, passed["canary"]["model"]]
        assert d.arms[1]["weight"] / sum(a["weight"] for a in d.arms) == pytest.approx(0.2)
        assert d.history[-1]["gate"]["candidate_run"] == passed["candidate_run"]
        # the candidate continued v1's adapter (rank 4) and is served as a LoRA of the same base
        row = s.get(
            FineTunedModel, s.query(FineTunedModel.pk).filter_by(id=passed["canary"]["model"]).scalar()
        )
        assert row.training_type == "lora"
    assert (
        json.loads((tmp_path / "yes" / "candidate" / "adapter" / "adapter_config.json").read_text())["r"] == 4
    )
