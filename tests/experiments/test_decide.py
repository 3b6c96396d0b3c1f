"""`decide`: four options on the same held-out questions, a recommendation with its reason, and the report."""

from __future__ import annotations

import json

import pytest

from tuneforge.data.schema import Example, Message
from tuneforge.experiments import decide as D
from tuneforge.experiments import rag


def test_decide_compares_four_options_and_writes_the_report(tuned_run, tmp_path):
    report = D.decide(tuned_run, few_shot=2, k=2, max_new_tokens=6, out_dir=tmp_path / "out")
    keys = [o["key"] for o in report["options"]]
    assert keys == ["zero_shot", "few_shot", "rag", "fine_tuned"]
    opts = {o["key"]: o for o in report["options"]}
    # The tuned model learnt the task; the random base cannot answer, with or without examples.
    assert opts["fine_tuned"]["quality"] >= opts["zero_shot"]["quality"] + 20
    assert report["recommendation"]["choice"] == "fine_tuned"
    assert "points above" in report["recommendation"]["reason"]
    # Retrieved and few-shot examples make longer prompts; only the tuned run has a training cost.
    assert opts["rag"]["prompt_tokens"] > opts["zero_shot"]["prompt_tokens"]
    assert opts["few_shot"]["prompt_tokens"] > opts["zero_shot"]["prompt_tokens"]
    assert opts["fine_tuned"]["one_off_seconds"] > 0 and opts["zero_shot"]["one_off_seconds"] == 0
    assert report["leakage"]["tuned_train"]["n"] > 0 and "verdict" in report["leakage"]
    out = tmp_path / "out"
    assert json.loads((out / "decide.json").read_text())["recommendation"] == report["recommendation"]
    md = (out / "decide.md").read_text()
    assert "| fine-tuned |" in md and "Recommendation" in md and "leakage" in md
    assert (out / "decide.png").stat().st_size > 10_000


def _row(key, q, ms, tokens=50, one_off=0.0):
    return {
        "key": key,
        "title": key,
        "quality": q,
        "ms_per_request": ms,
        "prompt_tokens": tokens,
        "one_off_seconds": one_off,
    }


def test_recommendation_prefers_no_training_when_it_is_as_good():
    rows = [_row("zero_shot", 40, 100), _row("rag", 79, 300), _row("fine_tuned", 80, 100, one_off=600)]
    rec = D.recommend(rows, tolerance=2, metric="accuracy")
    assert rec["choice"] == "rag"
    # The tuned model is 0.2 s faster per request: 600 s of training pays back after 3000 requests.
    assert rec["break_even_requests"] == pytest.approx(3000)
    assert "3,000 requests" in rec["reason"]


def test_recommendation_is_fine_tuning_when_only_it_reaches_the_quality():
    rows = [_row("zero_shot", 10, 100), _row("few_shot", 50, 200), _row("fine_tuned", 90, 100, one_off=60)]
    rec = D.recommend(rows, tolerance=2, metric="accuracy")
    assert rec["choice"] == "fine_tuned" and "40.0 points above" in rec["reason"]


def test_rag_prompt_holds_the_retrieved_examples_and_documents(tmp_path):
    from tuneforge.config import DataConfig

    train = [
        Example("chat", [Message("user", q), Message("assistant", a)])
        for q, a in [
            ("Capital of Peru?", "Lima"),
            ("Capital of Japan?", "Tokyo"),
            ("Capital of Chile?", "Santiago"),
        ]
    ]
    question = Example(
        "chat", [Message("user", "Which city is the capital of Japan?"), Message("assistant", "Tokyo")]
    )
    emb = rag.Embedder()
    index = rag.Index.build(rag.example_passages(train), emb)
    rewrite, _ = D.rag_rewrite(index, [question], 1, DataConfig(train="-"), [])
    prompt = rewrite(question, [Message("user", "Which city is the capital of Japan?")])
    assert [m.content for m in prompt] == [
        "Capital of Japan?",
        "Tokyo",
        "Which city is the capital of Japan?",
    ]

    (tmp_path / "d.txt").write_text("Tokyo is the capital of Japan.\n\nLima is in Peru.")
    index = rag.Index.build(rag.document_passages(tmp_path), emb)
    rewrite, _ = D.rag_rewrite(index, [question], 1, DataConfig(train="-"), [])
    prompt = rewrite(
        question, [Message("system", "Be brief."), Message("user", "Which city is the capital of Japan?")]
    )
    assert prompt[0].role == "system" and "Be brief." in prompt[0].content
    assert "[1] Tokyo is the capital of Japan." in prompt[0].content
