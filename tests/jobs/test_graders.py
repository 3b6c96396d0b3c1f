"""jobs/graders.py: OpenAI's reinforcement graders as GRPO rewards (what maps, what is refused and why), the rows
with their reference moved into the answer turn, and the run config of a reinforcement job."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.jobs.test_openai import _cfg
from tuneforge.config import RewardConfig
from tuneforge.data.schema import Example, Message
from tuneforge.jobs.graders import GraderError, prepare_rows, rewards_from_grader
from tuneforge.train import rewards as R

SAMPLE = "{{sample.output_text}}"


def check(reference: str, **kw) -> dict:
    return {
        "type": "string_check",
        "name": "ok",
        "input": SAMPLE,
        "reference": reference,
        "operation": "eq",
        **kw,
    }


def scores(grader: dict, answer: str, reference: str) -> float:
    """The total reward the mapped built-ins give `answer` when the row's reference is `reference`."""
    built = R.build([RewardConfig.model_validate(r) for r in rewards_from_grader(grader).rewards])
    ex = Example("chat", [Message("user", "q"), Message("assistant", reference)])
    return R.score(built, "q", answer, ex)[0]


def test_string_check_against_an_item_field_is_exact_match_on_that_field():
    g = rewards_from_grader(check("{{ item.city }}"))
    assert g.reference_field == "city"
    assert [(r["kind"], r["weight"]) for r in g.rewards] == [("exact_match", 1.0)]
    assert scores(check("{{item.city}}"), " Lima ", "Lima") == 1.0
    assert scores(check("{{item.city}}"), "lima", "Lima") == 0.0  # eq is case-sensitive, as OpenAI's


def test_string_check_against_a_literal_needs_no_reference_field():
    g = rewards_from_grader(check("yes"))
    assert g.reference_field is None and g.rewards[0]["kind"] == "regex"
    assert scores(check("a.b"), " a.b\n", "whatever") == 1.0
    assert scores(check("a.b"), "axb", "whatever") == 0.0  # the literal is not a pattern
    assert scores(check("a.b"), "a.b!", "whatever") == 0.0


def test_multi_is_a_weighted_sum_of_its_graders():
    multi = {
        "type": "multi",
        "graders": {
            "fields": {"type": "field_match", "fields": ["queue", "priority"], "reference": "{{item.label}}"},
            "json": {"type": "json_valid"},
            "unused": {"type": "length_penalty"},
        },
        "calculate_output": "0.75 * fields + json / 4 - 0 * unused",
    }
    g = rewards_from_grader(multi)
    assert g.reference_field == "label"
    assert [(r["kind"], r["weight"]) for r in g.rewards] == [("field_match", 0.75), ("json_valid", 0.25)]
    ref = json.dumps({"queue": "billing", "priority": "high"})
    assert scores(multi, json.dumps({"queue": "billing", "priority": "low"}), ref) == pytest.approx(0.625)
    assert scores(multi, "not json", ref) == 0.0


@pytest.mark.parametrize(
    ("grader", "says"),
    [
        ({"type": "python", "source": "def grade(s, i): return 1"}, "runs the caller's code"),
        ({"type": "score_model", "model": "gpt-4o"}, "judge model"),
        ({"type": "text_similarity", "evaluation_metric": "bleu"}, "text similarity"),
        (check("{{item.x}}", operation="ilike"), "operation 'ilike'"),
        (check("{{item.x}}", input="{{sample.output_json.x}}"), "input must be"),
        (check("{{sample.output_text}}"), "reference must be {{item.FIELD}}"),
        ({"type": "field_match"}, "needs fields"),
        ({"type": "field_match", "fields": "queue"}, "list of field names"),
        ({"type": "bleu_score"}, "unknown grader type 'bleu_score'"),
        (
            {
                "type": "multi",
                "graders": {"a": check("{{item.x}}"), "b": check("{{item.y}}")},
                "calculate_output": "a + b",
            },
            "different item fields ('x' and 'y')",
        ),
        (
            {"type": "multi", "graders": {"a": check("yes")}, "calculate_output": "a * a"},
            "not a weighted sum",
        ),
        (
            {"type": "multi", "graders": {"a": check("yes")}, "calculate_output": "max(a, 1)"},
            "not a weighted sum",
        ),
        ({"type": "multi", "graders": {"a": check("yes")}, "calculate_output": "a + c"}, "names 'c'"),
        ({"type": "multi", "graders": {"a": check("yes")}, "calculate_output": "0 * a"}, "same score"),
        ({"type": "multi", "graders": {"a": check("yes")}}, "needs calculate_output"),
        ("string_check", "must be an object"),
        ({"type": "regex", "pattern": "(unclosed"}, "does not compile"),
        ({"type": "regex", "pattern": 5}, "must be a string"),
        ({"type": "multi", "graders": {"a": check("yes")}, "calculate_output": "1e999 * a"}, "weight inf"),
        ({"type": "string_check", "reference": 7}, "needs a reference"),
    ],
)
def test_graders_without_a_built_in_are_refused_with_the_reason(grader, says):
    with pytest.raises(GraderError) as e:
        rewards_from_grader(grader)
    assert says in str(e.value)


def test_rows_get_their_reference_as_the_answer_line_for_line(tmp_path):
    src = tmp_path / "rft.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "Ticket: refund"}], "label": {"queue": "billing"}, "id": 7},
        {"messages": [{"role": "user", "content": "Capital of Peru?"}], "label": "Lima"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "kept"}]},
        {"messages": [{"role": "user", "content": "no reference"}]},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    moved, unanswered = prepare_rows(src, "label", tmp_path / "out" / "rows.jsonl")
    assert (moved, unanswered) == (2, [4])
    out = (tmp_path / "out" / "rows.jsonl").read_text().splitlines()
    assert len(out) == 5 and out[4] == "{not json"  # left for the file checks to report, at its own line
    first = json.loads(out[0])
    assert first["messages"][-1] == {"role": "assistant", "content": '{"queue": "billing"}'}
    assert "label" not in first and first["id"] == 7
    assert json.loads(out[1])["messages"][-1]["content"] == "Lima"
    assert json.loads(out[2]) == rows[2]


def test_run_config_of_a_reinforcement_job(tmp_path):
    resolved = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0, "eval_interval": 3}
    cfg = _cfg(
        tmp_path,
        method_type="reinforcement",
        resolved=resolved,
        extras={
            "num_generations": 6,
            "max_new_tokens": 16,
            "temperature": 0.7,
            "epsilon": 0.3,
            "lora_rank": 4,
        },
        grader=check("{{item.city}}"),
    )
    o = cfg.objective
    assert (o.name, o.num_generations, o.max_new_tokens, o.temperature, o.epsilon) == (
        "grpo",
        6,
        16,
        0.7,
        0.3,
    )
    assert o.beta == pytest.approx(0.04)  # "auto": GRPO's own default, not DPO's 0.1
    assert [(r.kind, r.weight) for r in o.rewards] == [("exact_match", 1.0)]
    assert cfg.train.eval_every == 3 and cfg.method.r == 4 and cfg.data.format != "preference"
    no_kl = _cfg(
        tmp_path, method_type="reinforcement", resolved=resolved, extras={"beta": 0}, grader=check("yes")
    )
    assert no_kl.objective.beta == 0.0


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["type", "input", "reference", "operation", "graders", "calculate_output", "fields", "pattern"]
)
_types = st.sampled_from(["string_check", "multi", "python", "field_match", "regex", "json_valid", "x"])


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(_keys, _json_values | _types, max_size=5)
    | st.builds(lambda t, rest: {**rest, "type": t}, _types, st.dictionaries(_keys, _json_values, max_size=4))
    | _json_values
)
def test_any_json_grader_is_mapped_or_refused_with_a_grader_error(grader):
    """What a client sends as a grader is mapped or refused with a reason (a 400), never an exception (a 500)."""
    try:
        graded = rewards_from_grader(grader)
    except GraderError:
        return
    assert graded.rewards
