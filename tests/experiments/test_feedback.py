"""The feedback loop's arithmetic: Wilson intervals and the two-proportion z-test against known values, per-arm
figures from a routing log, verdicts that need enough ratings, and the rules that turn feedback into KTO / DPO /
SFT rows (with every skipped answer counted)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from tuneforge.experiments.feedback import arm_figures, build_datasets, compare_arms, two_proportion_z, wilson
from tuneforge.jobs.feedback import bucket, pick


def fb(thumbs=None, score=None, correction=None):
    return NS(thumbs=thumbs, score=score, correction=correction)


def test_wilson_and_z_against_known_values():
    lo, hi = wilson(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    z, p = two_proportion_z(60, 100, 45, 100)
    assert z == pytest.approx(2.1239, abs=1e-3) and p == pytest.approx(0.0337, abs=1e-3)
    assert two_proportion_z(5, 10, 5, 10) == (0.0, 1.0)


def test_arm_figures_and_verdicts():
    arms = [{"model": "old", "weight": 1}, {"model": "new", "weight": 1}]
    log, feedback = [], {}
    for i in range(60):
        model = "old" if i % 2 else "new"
        cid = f"c{i}"
        log.append(
            NS(
                model=model,
                shadow=False,
                latency_ms=100 + i,
                prompt_tokens=5,
                completion_tokens=3,
                completion_id=cid,
            )
        )
        good = (i % 10 < 8) if model == "new" else (i % 10 < 4)  # new: 80% up, old: 40%
        feedback[cid] = [fb("up" if good else "down")]
    figs = {f.model: f for f in arm_figures(arms, None, log, feedback)}
    assert (
        figs["new"].requests == 30
        and figs["new"].thumbs_up == 24
        and figs["old"].up_rate == pytest.approx(0.4)
    )
    assert figs["new"].weight == 0.5 and figs["new"].latency_ms_p50 is not None
    (cmp,) = compare_arms(list(figs.values()))
    assert cmp.control == "old" and cmp.model == "new" and cmp.verdict == "better" and cmp.p_value < 0.05
    # the same rates on a handful of ratings: no call yet
    few = [r for r in log if int(r.completion_id[1:]) < 8]
    (cmp,) = compare_arms(arm_figures(arms, None, few, feedback))
    assert cmp.verdict == "not enough ratings yet"


def test_buckets_are_sticky_and_weights_split():
    assert bucket("dep", "ann") == bucket("dep", "ann") != bucket("other", "ann")
    arms = [{"model": "a", "weight": 9}, {"model": "b", "weight": 1}]
    picks = [pick(arms, bucket("dep", f"u{i}")) for i in range(2000)]
    assert 0.07 < picks.count("b") / 2000 < 0.13


def test_datasets_from_feedback_rules():
    q = [{"role": "user", "content": "Reset my password"}]
    answers = [
        NS(id="1", model="a", prompt=q, text="Click reset.", feedback=[fb("up"), fb(score=5)]),
        NS(id="2", model="b", prompt=q, text="No idea.", feedback=[fb("down")]),
        NS(id="3", model="a", prompt=q, text="Wrong.", feedback=[fb(correction="Use the reset link.")]),
        NS(id="4", model="a", prompt=q, text="Meh.", feedback=[fb("up"), fb("down")]),
        NS(id="5", model="a", prompt=q, text="Unrated.", feedback=[]),
        NS(id="6", model="a", prompt=q, text="Same", feedback=[fb(correction="Same")]),
        NS(id="7", model="a", prompt=q, text="Click reset.", feedback=[fb(score=4)]),  # repeats answer 1
    ]
    out = build_datasets(answers)
    assert [r["label"] for r in out.kto] == [True, False]
    assert out.skipped["kto: duplicate row"] == 1
    assert out.skipped["conflicting ratings"] == 1 and out.skipped["no feedback"] == 1
    assert out.skipped["correction equals the answer"] == 1
    prefs = {(r["preferred_output"][0]["content"], r["non_preferred_output"][0]["content"]) for r in out.dpo}
    assert prefs == {("Use the reset link.", "Wrong."), ("Click reset.", "No idea.")}
    assert out.used["dpo: A/B: arms rated apart"] == 1
    sft = [r["messages"][-1]["content"] for r in out.sft]
    assert sft == ["Click reset.", "Use the reset link."]
