"""Real files from another fine-tuning project (LLaMA-Factory's data/ folder) load with the right counts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tuneforge.data.formats import load_file
from tuneforge.data.validate import drop_invalid

PEER = Path(__file__).resolve().parents[2].parent / "shared" / "peer-data" / "llamafactory"
pytestmark = pytest.mark.skipif(
    not PEER.is_dir(), reason=f"peer data not found at {PEER} (clone ../shared beside)"
)

# file, records (SOURCE.md), detected format, kind of every example
EXPECTED = [
    ("identity.json", 91, "alpaca", "chat"),
    ("alpaca_en_demo.json", 999, "alpaca", "chat"),
    ("alpaca_zh_demo.json", 1000, "alpaca", "chat"),
    ("dpo_en_demo.json", 300, "preference", "preference"),
    ("kto_en_demo.json", 300, "preference", "preference"),
    ("glaive_toolcall_en_demo.json", 300, "sharegpt", "chat"),
    ("c4_demo.jsonl", 300, "text", "text"),
    ("v1_sft_demo.jsonl", 500, "chat", "chat"),
    ("v1_dpo_demo.jsonl", 10, "preference", "preference"),
]


def test_every_data_file_is_covered():
    files = {p.name for p in PEER.iterdir() if p.suffix in (".json", ".jsonl")} - {"dataset_info.json"}
    assert files == {name for name, *_ in EXPECTED}


@pytest.mark.parametrize(("name", "count", "fmt", "kind"), EXPECTED, ids=[e[0] for e in EXPECTED])
def test_loads_with_expected_count_and_format(name, count, fmt, kind):
    res = load_file(PEER / name)
    assert res.format == fmt
    assert res.n_rows == count
    assert len(res.examples) == count and res.rejects == []
    assert {ex.kind for ex in res.examples} == {kind}
    kept, rejects, _ = drop_invalid(res.examples)
    assert len(kept) == count, [r.reason for r in rejects[:3]]


def test_alpaca_rows_become_user_and_assistant_turns():
    raw = json.loads((PEER / "alpaca_en_demo.json").read_text())
    ex = load_file(PEER / "alpaca_en_demo.json").examples
    with_input = next(i for i, r in enumerate(raw) if r["input"])
    assert [m.role for m in ex[0].messages] == ["user", "assistant"]
    assert ex[0].messages[1].content == raw[0]["output"]
    assert (
        ex[with_input].messages[0].content == raw[with_input]["instruction"] + "\n" + raw[with_input]["input"]
    )
    assert ex[0].source.line == 2  # the line where the record's object starts


def test_kto_labels_become_desirable():
    ex = load_file(PEER / "kto_en_demo.json").examples
    assert Counter(e.desirable for e in ex) == {True: 150, False: 150}
    assert all(e.chosen is None and e.messages[-1].role == "assistant" for e in ex)


def test_dpo_pairs_have_prompt_chosen_and_rejected():
    ex = load_file(PEER / "dpo_en_demo.json").examples
    assert all(e.chosen[0].role == "assistant" and e.rejected[0].role == "assistant" for e in ex)
    assert all(e.messages and e.messages[-1].role == "user" for e in ex)
    assert (
        sum(1 for e in ex if e.messages[0].role == "system") == 80
    )  # 80 conversations open with a system turn


def test_glaive_tool_calls_and_observations():
    ex = load_file(PEER / "glaive_toolcall_en_demo.json").examples
    roles = Counter(m.role for e in ex for m in e.messages)
    assert roles == {"user": 746, "assistant": 746 + 211, "tool": 211}
    calls = [m for e in ex for m in e.messages if m.tool_calls]
    assert len(calls) == 211
    first = calls[0].tool_calls[0]["function"]
    assert first["name"] == "search_recipes" and json.loads(first["arguments"]) == {
        "ingredients": ["chicken", "bell peppers", "rice"]
    }
    assert sum(1 for e in ex if e.tools) == 300 - 109  # 109 rows offer no tools ("[]")
    assert ex[0].tools[0]["type"] == "function" and ex[0].tools[0]["function"]["name"] == "search_recipes"
    tool_msgs = [m for e in ex for m in e.messages if m.role == "tool"]
    assert all(m.name for m in tool_msgs)  # named after the call they answer


def test_v1_typed_parts_and_loss_weights():
    ex = load_file(PEER / "v1_sft_demo.jsonl").examples
    assert ex[0].messages[0].content == "hi"
    assert [m.weight for m in ex[0].messages] == [0.0, 1.0]
    assert ex[0].source.line == 1


def test_v1_dpo_shared_prefix_becomes_prompt():
    ex = load_file(PEER / "v1_dpo_demo.jsonl").examples
    assert all([m.role for m in e.messages] == ["system", "user"] for e in ex)
    assert all(len(e.chosen) == 1 and len(e.rejected) == 1 for e in ex)
    assert ex[1].chosen[0].content == "D: considerate"


def test_dataset_info_is_not_data():
    from tuneforge.errors import DataError

    with pytest.raises(DataError, match="no list of records"):
        load_file(PEER / "dataset_info.json")
