"""eval/compare.py on the tiny model: few-shot selection and prompt layout, the before/after report of a LoRA
model over the same base (`shared_weights=True`: the base answers with the adapter switched off), the
validation and raw-text losses against a hand computation of the cross-entropy, per-task headlines and the
forgetting figures on a general set.

The tiny model's weights are redrawn larger (seeded) so that greedy answers are varied text, and the LoRA
adapter is initialised randomly (`init_lora_weights=False`) so that it changes the answers.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import capitals_records, write_jsonl
from tests.eval.conftest import scramble
from tuneforge.config import DataConfig, EvalConfig
from tuneforge.data.general import general_examples
from tuneforge.data.schema import Example, Message
from tuneforge.data.tokenize import prompt_of, prompt_text
from tuneforge.eval import metrics as M
from tuneforge.eval.compare import (
    compare,
    general_loss_report,
    per_task,
    pick_shots,
    raw_text,
    validation_loss,
    with_shots,
)
from tuneforge.eval.generate import SamplingParams, generate_chats
from tuneforge.models.load import load_model

MAX_NEW = 6
DATA = DataConfig(train="unused.jsonl")


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    """The plain base model (no PEFT wrapper)."""
    lm = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    scramble(lm.model)
    return lm


@pytest.fixture(scope="module")
def tuned(tiny_model_dir):
    """A second copy of the same base with a random LoRA adapter on q_proj and v_proj."""
    from peft import LoraConfig, get_peft_model

    lm = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    scramble(lm.model)
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return dataclasses.replace(lm, model=get_peft_model(lm.model, cfg))


def chat(question: str, answer: str, **meta) -> Example:
    return Example("chat", [Message("user", question), Message("assistant", answer)], meta=meta)


def chats(n: int, seed: int = 0) -> list[Example]:
    return [
        chat(r["messages"][0]["content"], r["messages"][1]["content"]) for r in capitals_records(n, seed=seed)
    ]


def answers(lm, examples, shots=()) -> list[str]:
    """Greedy answers the way an evaluation asks: the example's prompt (after any solved shots)."""
    shot_convs = [list(s.messages) for s in shots]
    convs = [with_shots(prompt_of(e, DATA), shot_convs) for e in examples]
    return [g.text for g in generate_chats(lm, convs, SamplingParams(max_new_tokens=MAX_NEW, seed=0))]


def hand_loss(model, pieces: list[tuple[list[int], list[int]]]) -> float:
    """Mean cross-entropy of the `target` tokens given everything before them, one sequence at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for context, target in pieces:
            ids = torch.tensor([context + target])
            logits = model(input_ids=ids).logits[0, len(context) - 1 : -1].float()
            total += float(F.cross_entropy(logits, torch.tensor(target), reduction="sum"))
            count += len(target)
    return total / count


def answer_pieces(lm, examples) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) with the answer closed by the template's end-of-turn token."""
    tok = lm.tokenizer
    return [
        (
            tok(prompt_text(tok, prompt_of(e, DATA)), add_special_tokens=False)["input_ids"],
            tok(e.answer() + "<|im_end|>", add_special_tokens=False)["input_ids"],
        )
        for e in examples
    ]


# ------------------------------------------------------------------------------------- shots and prompts
def test_pick_shots_distinct_answers_deterministic_per_seed():
    train = chats(24)
    shots = pick_shots(train, 5, seed=3)
    assert len(shots) == 5
    assert len({s.answer() for s in shots}) == 5
    assert all(s in train for s in shots)
    assert pick_shots(train, 5, seed=3) == shots
    assert len({tuple(id(s) for s in pick_shots(train, 5, seed=k)) for k in range(4)}) > 1
    assert pick_shots(train, 0, seed=3) == [] and pick_shots([], 3, seed=3) == []


def test_pick_shots_small_train_and_repeated_answers():
    train = chats(2)
    assert sorted(map(id, pick_shots(train, 5, seed=0))) == sorted(map(id, train))  # all there is
    same = [chat(f"Capital of France, take {i}?", "Paris") for i in range(3)] + [chat("Japan?", "Tokyo")]
    shots = pick_shots(same, 3, seed=1)
    assert len(shots) == 3  # only two distinct answers: both, then a repeat
    assert {s.answer() for s in shots} == {"Paris", "Tokyo"}
    assert len({id(s) for s in shots}) == 3


def test_with_shots_order():
    prompt = [Message("system", "Be brief."), Message("user", "Capital of Peru?")]
    shot1 = [Message("system", "a shot's own system turn"), Message("user", "Q1"), Message("assistant", "A1")]
    shot2 = [Message("user", "Q2"), Message("assistant", "A2")]
    got = with_shots(prompt, [shot1, shot2])
    assert [(m.role, m.content) for m in got] == [
        ("system", "Be brief."),
        ("user", "Q1"),
        ("assistant", "A1"),
        ("user", "Q2"),
        ("assistant", "A2"),
        ("user", "Capital of Peru?"),
    ]
    assert with_shots(prompt, []) == prompt


# ------------------------------------------------------------------------------------- compare(), LoRA
@pytest.fixture(scope="module")
def run(base, tuned, tmp_path_factory):
    """One before/after comparison of the LoRA model against its own base, with what to check it against."""
    questions = [chat(f"{q} (question {i})", "?") for i, q in enumerate(["Capital of Chile?"] * 5)]
    base_answers = answers(base, questions)
    tuned_answers = answers(tuned, questions)
    # the adapter changes every answer, and neither model says "Santiago": the scores below follow
    assert all(M.norm(b) != M.norm(t) for b, t in zip(base_answers, tuned_answers, strict=True))
    assert "Santiago" not in base_answers + tuned_answers
    # references the models' own answers, so that the scores differ: tuned is right on 3, base on 1
    refs = tuned_answers[:3] + base_answers[3:4] + ["Santiago"]
    test = [chat(q.messages[0].content, r) for q, r in zip(questions, refs, strict=True)]
    train = chats(8, seed=1)
    validation = chats(3, seed=2)
    general_file = write_jsonl(tmp_path_factory.mktemp("general") / "general.jsonl", capitals_records(4))
    general = general_examples(str(general_file), "eval")
    eval_cfg = EvalConfig(
        max_new_tokens=MAX_NEW, batch_size=4, few_shot=2, samples=2, general=str(general_file)
    )
    report = compare(
        tuned,
        tuned,
        test,
        train=train,
        validation=validation,
        data_cfg=DATA,
        eval_cfg=eval_cfg,
        seed=0,
        shared_weights=True,
    )
    return SimpleNamespace(**locals())


def test_compare_variants_and_report_keys(run):
    r = run.report
    assert [v["key"] for v in r["variants"]] == ["base", "base_few_shot", "tuned"]
    assert [v["shots"] for v in r["variants"]] == [0, 2, 0]
    assert r["n_test"] == 5 and len(r["answers"]) == 5
    assert r["base_model"] == run.base.name
    base, few, tuned = r["variants"]
    assert few["prompt_tokens_mean"] > base["prompt_tokens_mean"] == tuned["prompt_tokens_mean"]
    assert all(0 < v["completion_tokens_mean"] <= MAX_NEW + 1 for v in r["variants"])
    for v in r["variants"]:
        assert v["headline"] == M.headline(v["metrics"])
        assert "answers" not in v  # answers are reported per example, not per variant


def test_compare_base_answers_with_the_adapter_off(run):
    got = {k: [a[k] for a in run.report["answers"]] for k in ("base", "base_few_shot", "tuned")}
    assert got["base"] == run.base_answers  # the plain base model's answers
    shots = pick_shots(run.train, 2, seed=0)
    assert got["base_few_shot"] == answers(run.base, run.test, shots)
    assert got["tuned"] == run.tuned_answers
    assert [a["reference"] for a in run.report["answers"]] == run.refs
    # compare leaves the adapter switched on and unmerged
    assert answers(run.tuned, run.test) == run.tuned_answers
    assert not any(getattr(m, "merged", False) for m in run.tuned.model.modules())


def test_compare_gain_is_tuned_minus_base(run):
    base, tuned = run.report["variants"][0]["headline"], run.report["variants"][-1]["headline"]
    assert tuned["exact match (strict)"] == pytest.approx(60.0)
    assert base["exact match (strict)"] == pytest.approx(20.0)
    gain = run.report["gain"]
    assert set(gain) == set(tuned) & set(base)
    for k, g in gain.items():
        assert g == pytest.approx(tuned[k] - base[k])
    assert gain["exact match (strict)"] == pytest.approx(40.0)


def test_compare_samples(run):
    samples = run.report["samples"]
    assert len(samples) == run.eval_cfg.samples
    for i, s in enumerate(samples):
        assert s["question"] == run.test[i].messages[0].content
        assert s["reference"] == run.refs[i]
        assert s["where"] == f"test #{i + 1}"
        assert s["answers"] == {k: run.report["answers"][i][k] for k in ("base", "base_few_shot", "tuned")}


def test_compare_validation_and_forgetting(run):
    val = run.report["validation"]
    assert set(val) == {"base", "tuned"}
    plain = validation_loss(run.base, run.validation, DATA, True, ())
    assert val["base"]["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert val["tuned"]["loss"] != pytest.approx(val["base"]["loss"], rel=1e-3)
    for v in val.values():
        assert v["perplexity"] == pytest.approx(math.exp(v["loss"]))
    fg = run.report["forgetting"]
    assert fg["n_general"] == len(run.general) == 4
    gcfg = DataConfig(train="general", max_length=512)
    assert fg["base_loss"] == pytest.approx(validation_loss(run.base, run.general, gcfg, True, ())["loss"])
    assert fg["tuned_loss"] == pytest.approx(validation_loss(run.tuned, run.general, gcfg, True, ())["loss"])


def test_compare_a_lone_model(base):
    test = chats(5, seed=3)
    eval_cfg = EvalConfig(max_new_tokens=MAX_NEW, few_shot=2, max_examples=3, samples=5, general="bundled")
    r = compare(base, None, test, train=chats(6, seed=4), data_cfg=DATA, eval_cfg=eval_cfg)
    assert [(v["key"], v["title"]) for v in r["variants"]] == [
        ("base", "(zero-shot)"),
        ("base_few_shot", "(2-shot)"),
    ]
    assert r["n_test"] == 3 and len(r["answers"]) == 3 and len(r["samples"]) == 3  # max_examples
    assert r["tuned_model"] is None and r["validation"] == {}
    assert "gain" not in r and "forgetting" not in r and "tasks" not in r
    assert [a["base"] for a in r["answers"]] == answers(base, test[:3])


# ------------------------------------------------------------------------------------------------ losses
def test_validation_loss_is_mean_cross_entropy_of_answer_tokens(base, tuned):
    examples = [
        chat("Capital of France?", "Paris"),
        chat("Which city is the capital of Kenya? One word.", "Nairobi"),
        chat("Tell me Chile's capital.", "It is Santiago, the largest city of Chile."),
        chat("capital Peru", "Lima"),
        chat("Name the capital of Egypt.", "Cairo"),
    ]
    pieces = answer_pieces(base, examples)
    expected = hand_loss(base.model, pieces)
    got = validation_loss(base, examples, DATA, True, (), batch_size=2)  # padded batches, a ragged last one
    assert got["loss"] == pytest.approx(expected, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    # over a PEFT model: the adapter's own loss, or the base's with the adapter off
    with_adapter = validation_loss(tuned, examples, DATA, True, (), batch_size=2)["loss"]
    assert with_adapter == pytest.approx(hand_loss(tuned.model, pieces), rel=1e-5)
    assert with_adapter != pytest.approx(expected, rel=1e-3)
    assert validation_loss(tuned, examples, DATA, False, ())["loss"] == pytest.approx(expected, rel=1e-5)
    assert validation_loss(base, [], DATA, True, ()) is None


def test_raw_text_is_scored_by_loss(base, tuned):
    texts = [
        Example("text", text="Paris is the capital and largest city of France."),
        Example("text", text="Lima is the capital of Peru."),
        Example("text", text="Nairobi, the capital of Kenya, lies in the south of the country."),
    ]
    assert raw_text(texts) and not raw_text([]) and not raw_text(texts + chats(1))
    tok = base.tokenizer
    pieces = []
    for e in texts:
        ids = tok(e.text, add_special_tokens=True)["input_ids"] + [tok.eos_token_id]
        pieces.append((ids[:1], ids[1:]))  # every token after the first, the closing EOS included
    eval_cfg = EvalConfig(max_new_tokens=MAX_NEW, few_shot=2, general=None)
    r = compare(tuned, tuned, texts, train=chats(4), data_cfg=DATA, eval_cfg=eval_cfg, shared_weights=True)
    assert r["task"] == "text"
    assert [v["key"] for v in r["variants"]] == ["base", "tuned"]  # no few-shot variant for raw text
    for v, model in zip(r["variants"], (base.model, tuned.model), strict=True):
        loss = hand_loss(model, pieces)
        assert v["metrics"]["loss"] == pytest.approx(loss, rel=1e-5)
        assert v["headline"]["text loss (x100)"] == pytest.approx(100 * loss, rel=1e-5)
        assert v["headline"]["text perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    before, after = r["variants"][0]["headline"], r["variants"][1]["headline"]
    assert r["gain"] == pytest.approx({k: after[k] - before[k] for k in before})
    assert all(a == {"reference": None, "base": "", "tuned": ""} for a in r["answers"])
    assert "forgetting" not in r  # eval.general is null


# ------------------------------------------------------------------------------------- per task, general
def test_per_task_headlines():
    test = [
        chat(f"q{i}", ans, task=task)
        for i, (ans, task) in enumerate(
            [
                ("Paris", "capitals"),
                ("Tokyo", "capitals"),
                ("Rome", "capitals"),
                ("yes", "yesno"),
                ("no", "yesno"),
            ]
        )
    ]
    results = [
        {"key": "base", "answers": ["Paris", "x", "y", "no", "no"]},
        {"key": "tuned", "answers": ["Paris", "Tokyo", "Rome", "yes", "x"]},
    ]
    out = per_task(test, results, EvalConfig())
    assert set(out) == {"capitals", "yesno"}
    assert out["capitals"]["n"] == 3 and out["yesno"]["n"] == 2
    em = "exact match (strict)"
    assert out["capitals"]["base"][em] == pytest.approx(100 / 3)
    assert out["capitals"]["tuned"][em] == pytest.approx(100.0)
    assert out["yesno"]["base"][em] == pytest.approx(50.0)
    assert out["yesno"]["tuned"][em] == pytest.approx(50.0)
    one = [chat("q", "a", task="only")] * 2
    assert per_task(one, [{"key": "base", "answers": ["a", "b"]}], EvalConfig()) == {}
    assert per_task(chats(3), [{"key": "base", "answers": ["", "", ""]}], EvalConfig()) == {}


def test_general_loss_report_arithmetic():
    got = general_loss_report({"loss": 2.0, "perplexity": 8.0}, {"loss": 2.5, "perplexity": 10.0}, 7)
    assert got == {
        "n_general": 7,
        "base_loss": 2.0,
        "tuned_loss": 2.5,
        "delta_loss": 0.5,
        "base_perplexity": 8.0,
        "tuned_perplexity": 10.0,
        "perplexity_change_pct": pytest.approx(25.0),
    }
    assert general_loss_report(None, {"loss": 1.0, "perplexity": 2.7}, 3) is None
    assert general_loss_report({"loss": 1.0, "perplexity": 2.7}, None, 3) is None
