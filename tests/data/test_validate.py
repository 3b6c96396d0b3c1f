"""Validation: OpenAI's checks and ours, each naming the line and the field."""

from __future__ import annotations

import pytest

from tuneforge.data.formats import load_file
from tuneforge.data.schema import Example, Message
from tuneforge.data.validate import drop_invalid, validate

from .helpers import write

U = {"role": "user", "content": "Hi"}
A = {"role": "assistant", "content": "Hello"}

# (record, severity, code, field): each record is written on its own line 2 of a file whose line 1 is valid.
CASES = [
    ({"messages": []}, "error", "missing_messages", "messages"),
    ({"messages": [{"role": "bot", "content": "Hi"}, U, A]}, "error", "invalid_role", "messages[0].role"),
    ({"messages": [U]}, "error", "no_assistant_message", "messages"),
    (
        {"messages": [U, {"role": "assistant", "content": "  "}]},
        "error",
        "empty_content",
        "messages[1].content",
    ),
    ({"messages": [U, {**A, "weight": -1}]}, "error", "invalid_weight", "messages[1].weight"),
    ({"messages": [U, {**A, "weight": 0.5}]}, "warning", "invalid_weight", "messages[1].weight"),
    ({"messages": [U, {**A, "weight": 0}]}, "warning", "no_trained_tokens", "messages"),
    ({"messages": [U, U, A]}, "warning", "consecutive_roles", "messages[1].role"),
    (
        {"messages": [U, {"role": "tool", "content": "42"}, A]},
        "warning",
        "orphan_tool_message",
        "messages[1]",
    ),
    ({"text": "  ", "label": "pos"}, "error", "empty_text", "text"),
    ({"text": ""}, "error", "empty_text", "text"),
    ({"prompt": "Q", "chosen": "", "rejected": "no"}, "error", "empty_content", "chosen[0].content"),
    (
        {"prompt": "Q", "chosen": [{"role": "user", "content": "x"}], "rejected": "no"},
        "error",
        "no_assistant_message",
        "chosen",
    ),
    ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "warning", "identical_pair", "chosen"),
]


@pytest.mark.parametrize(
    ("record", "severity", "code", "field"), CASES, ids=[f"{c[2]}-{c[1]}" for c in CASES]
)
def test_problem_names_code_line_and_field(tmp_path, record, severity, code, field):
    first = {k: v for k, v in record.items()}  # a valid record of the same format on line 1
    if "messages" in record:
        first["messages"] = [U, A]
    elif "chosen" in record:
        first.update(chosen="good", rejected="bad")
    else:
        first["text"] = "fine"
    res = load_file(write(tmp_path / "d.jsonl", [first, record]))
    problems = validate(res.examples, min_examples=1)
    assert [(p.source.line, p.severity, p.code, p.field) for p in problems] == [(2, severity, code, field)]
    assert str(problems[0]).startswith(f"{tmp_path / 'd.jsonl'}:2, {field}: ")


def test_messages_explain_themselves():
    ex = Example("chat", [Message("user", "Hi"), Message("bot", "Hello")])
    (p, no_assistant) = validate([ex], min_examples=1)
    assert p.message == "role 'bot' is not one of system, user, assistant, tool"
    assert no_assistant.code == "no_assistant_message"


def test_assistant_tool_call_may_have_empty_content():
    call = [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]
    msgs = [
        Message("user", "Go"),
        Message("assistant", "", tool_calls=call),
        Message("tool", "ok", name="f"),
        Message("tool", "ok too", name="f"),
        Message("assistant", "Done"),
    ]
    assert validate([Example("chat", msgs)], min_examples=1) == []
    broken = [
        Message("user", "Go"),
        Message("assistant", "", tool_calls=[{"type": "function", "function": {}}]),
    ]
    codes = [p.code for p in validate([Example("chat", broken)], min_examples=1)]
    assert codes == ["invalid_tool_call"]


def test_classification_preference_and_kto_requirements():
    examples = [
        Example("classification", text="good"),
        Example("preference", [Message("user", "Q")]),
        Example("preference", [Message("user", "Q")], chosen=[Message("assistant", "A")]),
        Example("preference", [], chosen=[Message("assistant", "A")], rejected=[Message("assistant", "B")]),
        Example("preference", [Message("user", "Q"), Message("assistant", "A")], desirable=False),
        Example("preference", [Message("user", "Q")], desirable=True),
    ]
    got = [(p.code, p.field) for ex in examples for p in validate([ex], min_examples=1)]
    assert got == [
        ("missing_label", "label"),
        ("missing_preference", "chosen"),
        ("missing_rejected", "rejected"),
        ("missing_messages", "messages"),
        ("no_assistant_message", "messages"),
    ]


def test_too_few_examples():
    examples = [Example("text", text=f"doc {i}") for i in range(3)]
    (p,) = validate(examples, min_examples=10)
    assert (p.severity, p.code, p.source) == ("error", "invalid_n_examples", None)
    assert p.message == "3 examples; at least 10 are needed"
    assert validate(examples, min_examples=3) == []


def test_drop_invalid_rejects_errors_and_keeps_warnings(tmp_path):
    rows = [
        {"messages": [U, A]},
        {"messages": [U]},
        {"messages": [U, U, A]},
        {"messages": [{"role": "x"}, U]},
    ]
    examples = load_file(write(tmp_path / "d.jsonl", rows)).examples
    kept, rejects, warnings = drop_invalid(examples)
    assert [ex.source.line for ex in kept] == [1, 3]
    assert [(r.stage, r.source.line, r.field) for r in rejects] == [
        ("validate", 2, "messages"),
        ("validate", 4, "messages[0].role"),
    ]
    assert rejects[0].reason == "no_assistant_message: messages has no assistant message to learn from"
    assert rejects[1].reason.endswith("(and 2 more)")  # invalid role, empty content, no assistant message
    assert [(w.code, w.source.line) for w in warnings] == [("consecutive_roles", 3)]
