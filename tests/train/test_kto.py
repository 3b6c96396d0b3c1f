"""KTO on the tiny model: the loss is TRL's formula, training pushes desirable answers' log-ratios up and
undesirable ones' down, pairs are split into one of each, and impossible configs are refused."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from tests.conftest import ASKS, CAPITALS, tiny_config, write_jsonl
from tests.train.test_preference import preference_rows
from tuneforge.config import DataConfig
from tuneforge.data.schema import Example, Message
from tuneforge.errors import ConfigError, DataError
from tuneforge.recipes.run import train as run_training
from tuneforge.train.kto import KTO, collate_kto, kto_losses, tokenize_kto, warn_balance

REFUSALS = ["I don't know.", "Sorry, I cannot help with that.", "No idea, look it up."]


def kto_rows(n: int = 64, seed: int = 0) -> list[dict]:
    """Thumbs up for naming the capital, thumbs down for a refusal: one answer per question, unpaired."""
    rng = random.Random(seed)
    pairs = [(c, a) for c in CAPITALS for a in ASKS]
    rng.shuffle(pairs)
    rows = []
    for k, (c, a) in enumerate(pairs[:n]):
        good = k % 2 == 0
        answer = CAPITALS[c] if good else rng.choice(REFUSALS)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": a.format(c=c)},
                    {"role": "assistant", "content": answer},
                ],
                "label": good,
            }
        )
    return rows


@pytest.fixture
def kto_file(tmp_path):
    return write_jsonl(tmp_path / "kto.jsonl", kto_rows())


def _tok(tiny_model_dir):
    from tuneforge.models.load import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))[0]


def _chat(q: str, a: str, desirable: bool | None) -> Example:
    return Example("preference", [Message("user", q), Message("assistant", a)], desirable=desirable)


# ------------------------------------------------------------------------------------------------- the loss
def test_losses_follow_the_formula_with_z0_clamped_and_detached():
    r = torch.tensor([0.8, -0.3, 0.2, -1.5], requires_grad=True)
    desirable = torch.tensor([1.0, 1.0, 0.0, 0.0])
    beta, wd, wu = 0.5, 1.0, 1.5

    def expected(z0: float) -> list[float]:
        s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
        return [
            wd * (1 - s(beta * (0.8 - z0))),
            wd * (1 - s(beta * (-0.3 - z0))),
            wu * (1 - s(beta * (z0 - 0.2))),
            wu * (1 - s(beta * (z0 + 1.5))),
        ]

    kl = torch.tensor([0.9, 0.1, 0.4, -0.2], requires_grad=True)  # mean 0.3
    losses, z0 = kto_losses(r, kl, desirable, beta, wd, wu)
    assert float(z0) == pytest.approx(0.3)
    assert losses.tolist() == pytest.approx(expected(0.3), abs=1e-6)
    losses.sum().backward()
    assert kl.grad is None  # z0 is a constant of the step: nothing flows into the KL rows
    # d/dr of w(1 - sigmoid(beta * (+-(r - z0)))) with z0 held fixed
    sig = torch.sigmoid(beta * (torch.tensor([0.8, -0.3, 0.2, -1.5]) - 0.3))
    grad = torch.where(desirable > 0, -wd * beta * sig * (1 - sig), wu * beta * sig * (1 - sig))
    assert r.grad.tolist() == pytest.approx(grad.tolist(), abs=1e-6)

    losses, z0 = kto_losses(r.detach(), torch.tensor([-0.5, -0.1, 0.2, -0.4]), desirable, beta, wd, wu)
    assert float(z0) == 0.0  # a negative KL estimate is clamped at 0
    assert losses.tolist() == pytest.approx(expected(0.0), abs=1e-6)
    # rows without answer tokens are left out of the mean
    _, z0 = kto_losses(
        r.detach(), torch.tensor([0.6, -9.0]), desirable, beta, wd, wu, torch.tensor([True, False])
    )
    assert float(z0) == pytest.approx(0.6)


def _logp(model, seq) -> float:
    """Summed log-probability of a sequence's weighted tokens, from the full logits (no fused head)."""
    ids = torch.tensor([seq.input_ids])
    logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return sum(float(logp[t - 1, ids[0, t]]) for t, w in enumerate(seq.weights) if w > 0)


def test_objective_loss_equals_a_hand_computation_on_a_lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    for name, p in model.named_parameters():  # a trained-looking adapter, so policy and reference differ
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    model.eval()
    examples = [
        _chat("Capital of France?", "Paris", True),
        _chat("Capital of Peru?", "No idea, look it up.", False),
        _chat("Name the capital of Japan.", "Tokyo", True),
        _chat("Capital of Chile?", "Sorry, I cannot help with that.", False),
    ]
    items, _ = tokenize_kto(examples, _tok(tiny_model_dir), DataConfig(train="x", max_length=64))
    beta, wd, wu = 0.3, 1.2, 0.8
    obj = KTO(beta, wd, wu)
    out = obj.loss(model, collate_kto(items, pad_id=2))

    with torch.no_grad():
        pol = [_logp(model, it.seq) for it in items]
        pol_kl = [_logp(model, it.kl) for it in items]
        with model.disable_adapter():
            ref = [_logp(model, it.seq) for it in items]
            ref_kl = [_logp(model, it.kl) for it in items]
    r = [p - q for p, q in zip(pol, ref, strict=True)]
    z0 = max(0.0, sum(p - q for p, q in zip(pol_kl, ref_kl, strict=True)) / len(items))
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    losses = [
        wd * (1 - s(beta * (ri - z0))) if it.desirable else wu * (1 - s(beta * (z0 - ri)))
        for ri, it in zip(r, items, strict=True)
    ]
    assert any(abs(x) > 1e-3 for x in r)  # the adapter really moves the policy away from the reference
    assert float(out.loss_sum.detach()) == pytest.approx(sum(losses), rel=1e-4, abs=1e-5)
    assert out.norm == 4
    assert out.stats["kl"] / 4 == pytest.approx(z0, abs=1e-5)
    assert out.stats["desirable_share"] == 2
    assert out.stats["desirable_reward"] == pytest.approx(beta * (r[0] + r[2]), abs=1e-5)
    assert out.stats["undesirable_reward"] == pytest.approx(beta * (r[1] + r[3]), abs=1e-5)
    right = sum((ri > z0) == it.desirable for ri, it in zip(r, items, strict=True))
    assert out.correct == right
    out.loss_sum.backward()  # the graph reaches the adapter
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora" in n
    )


# --------------------------------------------------------------------------------------------- the data
def test_pairs_are_split_into_one_desirable_and_one_undesirable_item(tiny_model_dir):
    tok = _tok(tiny_model_dir)
    pairs = [
        Example(
            "preference",
            [Message("user", q)],
            chosen=[Message("assistant", good)],
            rejected=[Message("assistant", "I don't know.")],
        )
        for q, good in (
            ("Capital of France?", "Paris"),
            ("Capital of Japan?", "Tokyo"),
            ("Capital of Peru?", "Lima"),
        )
    ]
    items, rep = tokenize_kto(pairs, tok, DataConfig(train="x", max_length=64))
    assert [it.desirable for it in items] == [True, False] * 3
    assert rep.examples_in == 3 and rep.sequences_out == 6

    def answer(seq) -> str:
        return tok.decode([t for t, w in zip(seq.input_ids, seq.weights, strict=True) if w > 0])

    assert [answer(it.seq) for it in items[:2]] == ["Paris<|im_end|>", "I don't know.<|im_end|>"]
    for it in items:  # each KL row: this item's prompt, and the answer of an item with another prompt
        prompt = it.seq.input_ids[: it.prompt_len]
        assert it.kl.input_ids[: it.prompt_len] == prompt
        others = [o for o in items if o.seq.input_ids[: o.prompt_len] != prompt]
        assert any(answer(it.kl) == answer(o.seq) for o in others)
        assert all(w == 0 for w in it.kl.weights[: it.prompt_len])


def test_unusable_records_are_counted_with_their_reason(tiny_model_dir):
    tok = _tok(tiny_model_dir)
    examples = [
        _chat("Capital of France?", "Paris", True),
        _chat("Capital of Peru?", "No idea.", False),
        _chat("Capital of Japan?", "Tokyo", None),  # no label
        _chat("Capital of Chile?", "   ", True),  # empty answer
        _chat("Capital of Spain? " + "Please answer. " * 40, "Madrid", True),  # too long
        Example("chat", [Message("user", "hi"), Message("assistant", "hello")]),
    ]
    items, rep = tokenize_kto(examples, tok, DataConfig(train="x", max_length=48))
    assert len(items) == 2
    assert rep.dropped_no_target == 3 and rep.dropped_too_long == 1
    reasons = [r.reason for r in rep.rejects]
    assert any("no label" in x for x in reasons)
    assert any("answer is empty" in x for x in reasons)
    assert any("> data.max_length" in x for x in reasons)
    assert any("a chat record" in x for x in reasons)
    with pytest.raises(DataError, match="data.max_length=48"):
        tokenize_kto(examples, tok, DataConfig(train="x", max_length=48, truncation="raise"))
    with pytest.raises(DataError, match="kto needs answers labelled.*objective: sft"):
        tokenize_kto(examples[-1:], tok, DataConfig(train="x", max_length=48))


def test_class_balance_warning_suggests_weights_that_fit():
    assert warn_balance(50, 50, 1.0, 1.0) is None
    assert warn_balance(52, 48, 1.0, 1.0) is None  # a balanced file's random split says nothing
    msg = warn_balance(300, 100, 1.0, 1.0)
    assert msg is not None and "= 3.00" in msg
    lo, hi = (float(x) for x in msg.split("undesirable_weight to ")[1].split(" ")[0].split("-"))
    for w_u in (lo, hi):
        assert 1 - 1e-2 <= 300 / (w_u * 100) <= 4 / 3 + 1e-2
    assert warn_balance(300, 100, 1.0, 2.5) is None  # the advice taken
    assert "every training answer is desirable" in warn_balance(40, 0, 1.0, 1.0)


# ----------------------------------------------------------------------------------------------- training
def test_training_raises_desirable_and_lowers_undesirable_log_ratios(tiny_model_dir, kto_file, tmp_path):
    cfg = tiny_config(
        tiny_model_dir,
        kto_file,
        tmp_path / "run",
        "objective=kto",
        "method.name=lora",
        "method.r=8",
        "objective.beta=1.0",
        "train.learning_rate=1e-2",
        "train.max_steps=16",
        "train.eval_every=4",
        "data.split.test=0.0",
        "data.split.validation=0.25",
    )
    _, rec = run_training(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps, evals = [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]
    assert steps[0]["loss"] == pytest.approx(0.5, abs=0.02)  # r = 0 at step 0: the model is its own reference
    assert steps[-1]["loss"] < 0.45
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert evals[-1]["val_reward_accuracy"] >= 0.9
    assert {"val_kl", "val_desirable_reward", "val_undesirable_reward", "val_desirable_share"} <= evals[
        -1
    ].keys()

    # The held-out answers' log-ratios, measured here rather than read from the logs: 0 before training.
    model = rec.loop.unwrapped
    model.eval()
    with torch.no_grad():
        r = []
        for it in rec.val_seqs:
            pol = _logp(model, it.seq)
            with model.disable_adapter():
                r.append((pol - _logp(model, it.seq), it.desirable))
    good = [x for x, d in r if d]
    bad = [x for x, d in r if not d]
    assert good and bad
    # Every held-out desirable answer became more likely than under the reference, every undesirable one less.
    assert min(good) > 0 and sum(good) / len(good) > 0.2
    assert max(bad) < 0 and sum(bad) / len(bad) < -1.0


# ------------------------------------------------------------------------------------------------ configs
def test_impossible_kto_configs_are_refused_with_what_to_use(tiny_model_dir, kto_file, tmp_path):
    run = tmp_path / "a"
    with pytest.raises(ConfigError, match="objective kto takes its reference.*use method lora"):
        tiny_config(tiny_model_dir, kto_file, run, "objective=kto")  # method full has no adapters
    lora = ("objective=kto", "method.name=lora")
    with pytest.raises(ConfigError, match="objective kto compares whole answers: set train.packing to false"):
        tiny_config(tiny_model_dir, kto_file, run, *lora, "train.packing=true")
    with pytest.raises(
        ConfigError, match="data.format is chat: give records with messages.*label true/false"
    ):
        tiny_config(tiny_model_dir, kto_file, run, *lora, "data.format=chat")
    with pytest.raises(ConfigError, match="forgetting.replay and forgetting.distill work with objective sft"):
        tiny_config(tiny_model_dir, kto_file, run, *lora, "forgetting.replay=0.2")
    with pytest.raises(ConfigError, match="apply to objective kto, not dpo"):
        tiny_config(
            tiny_model_dir, kto_file, run, "objective=dpo", "method.name=lora", "objective.desirable_weight=2"
        )
    with pytest.raises(ConfigError, match="undesirable_weight"):
        tiny_config(tiny_model_dir, kto_file, run, *lora, "objective.undesirable_weight=0")
    cfg = tiny_config(tiny_model_dir, kto_file, run, *lora, "objective.desirable_weight=1.3")
    assert cfg.objective.desirable_weight == 1.3


def test_a_pair_file_trains_with_kto(tiny_model_dir, tmp_path):
    """What a DPO user's file gives under kto: twice as many items, half of them desirable; and its estimate."""
    from tuneforge.recipes.lm import FineTune

    pref = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(24))
    cfg = tiny_config(tiny_model_dir, pref, tmp_path / "run", "objective=kto", "method.name=lora")
    rec = FineTune(cfg)
    rec.setup()
    assert len(rec.train_seqs) == 2 * len(rec.splits["train"])
    assert sum(it.desirable for it in rec.train_seqs) == len(rec.splits["train"])
    assert rec.estimate().peak_bytes > 0  # `tuneforge estimate` plans KTO items like any other
