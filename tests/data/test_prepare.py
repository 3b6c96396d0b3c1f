"""The whole pipeline: every row read ends up in a split or in the rejects, with counts that add up."""

from __future__ import annotations

import json

import pytest

from tuneforge.config import CleanConfig, DataConfig, SplitConfig
from tuneforge.data.prepare import prepare_data, read_split, reason_category, write_rejects, write_split
from tuneforge.errors import DataError

from .helpers import write

LONG = " ".join(f"word{i}" for i in range(80))


def messy_lines() -> list[str]:
    good = [
        json.dumps({"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."})
        for i in range(20)
    ]
    return good + [
        "{not json",  # 21: read
        "[1, 2]",  # 22: read
        json.dumps({"instruction": "No output"}),  # 23: normalise (missing output)
        good[0],  # 24: exact duplicate of line 1
        json.dumps({"instruction": "Explain", "input": "", "output": LONG}),  # 25: kept
        json.dumps(
            {"instruction": "Explain", "input": "", "output": LONG.replace("word40", "term")}
        ),  # 26: near dup
        json.dumps({"instruction": "Blank", "input": "", "output": "   "}),  # 27: validate (empty content)
        json.dumps({"instruction": "Fill me", "input": None, "output": "ok"}),  # 28: kept, input filled
        json.dumps({"instruction": "Huge", "input": "", "output": "x " * 500}),  # 29: too long
        "",  # blank: not a record
    ]


@pytest.fixture
def messy(tmp_path):
    p = tmp_path / "messy.jsonl"
    p.write_text("\n".join(messy_lines()) + "\n")
    return p


def count_words(ex) -> int:
    return len(ex.all_text().split())


def test_nothing_is_silently_lost(messy):
    cfg = DataConfig(train=str(messy), clean=CleanConfig(max_tokens=200, near_threshold=0.9))
    data = prepare_data(cfg, seed=0, count_tokens=count_words)
    kept = len(data.train) + len(data.validation) + len(data.test)
    dropped = [r for r in data.rejects if r.action == "dropped"]
    assert data.stats["rows_read"] == 29
    assert kept + len(dropped) == 29
    assert kept == 22  # 20 good + line 25 + line 28
    assert sorted(r.source.line for r in dropped) == [21, 22, 23, 24, 26, 27, 29]
    assert data.stats["rejected"] == {
        "read": {"not valid JSON": 1, "not a JSON object": 1},
        "normalise": {"missing field": 1},
        "clean": {"exact duplicate": 1, "near duplicate": 1, "too long": 1},
        "validate": {"empty_content": 1},
    }
    assert (data.stats["duplicates_exact"], data.stats["duplicates_near"], data.stats["filled"]) == (1, 1, 1)
    assert [r.source.line for r in data.rejects if r.action == "filled"] == [28]
    assert data.stats["split"] == {"train": 18, "validation": 2, "test": 2}
    assert data.format == "alpaca"


def test_prepare_is_deterministic_per_seed(messy):
    cfg = DataConfig(train=str(messy))
    a, b = prepare_data(cfg, seed=7), prepare_data(cfg, seed=7)
    assert [ex.fingerprint() for ex in a.test] == [ex.fingerprint() for ex in b.test]


def test_separate_validation_and_test_files_are_cleaned_not_split(tmp_path):
    train = [{"text": f"train doc {i}"} for i in range(12)]
    val = [{"text": "val doc 1"}, {"text": "val doc 1"}, {"text": "train doc 3"}, {"text": ""}]
    test = [{"text": "test doc"}]
    cfg = DataConfig(
        train=str(write(tmp_path / "train.jsonl", train)),
        validation=str(write(tmp_path / "val.jsonl", val)),
        test=str(write(tmp_path / "test.csv", test)),
        split=SplitConfig(validation=0.2, test=0.2),
    )
    data = prepare_data(cfg, seed=0)
    assert len(data.train) == 12  # nothing split off: both held-out sets come from files
    assert [ex.text for ex in data.validation] == ["val doc 1"]
    assert [ex.text for ex in data.test] == ["test doc"]
    reasons = sorted(r.reason for r in data.rejects)
    assert reasons[0].startswith("empty_text")
    assert reasons[1].startswith("exact duplicate of") and reasons[1].endswith("val.jsonl:1")
    assert reasons[2] == f"train overlap: same record as {tmp_path / 'train.jsonl'}:4, kept out of validation"
    assert data.stats["files"]["validation"]["rows"] == 4
    assert data.stats["files"]["validation"]["rejected"] == {
        "clean": {"exact duplicate": 1, "train overlap": 1},
        "validate": {"empty_text": 1},
    }
    assert data.stats["rows_read"] == 17


def test_held_out_file_of_another_kind_is_refused(tmp_path):
    cfg = DataConfig(
        train=str(write(tmp_path / "t.jsonl", [{"text": f"d {i}"} for i in range(12)])),
        validation=str(write(tmp_path / "v.jsonl", [{"text": "x", "label": "a"}])),
    )
    with pytest.raises(DataError, match="holds classification records but .*t.jsonl holds text records"):
        prepare_data(cfg, seed=0)


def test_too_few_examples_names_the_counts_and_reasons(tmp_path):
    rows = [{"text": "same"}] * 8 + [{"text": f"doc {i}"} for i in range(4)]
    cfg = DataConfig(
        train=str(write(tmp_path / "few.jsonl", rows)), split=SplitConfig(validation=0.1, test=0.1)
    )
    with pytest.raises(DataError) as e:
        prepare_data(cfg, seed=0)
    msg = str(e.value)
    assert "only 3 training examples left from" in msg and "(data.min_examples is 10)" in msg
    assert "12 rows read, 7 rejected (most often: exact duplicate ×7), 2 held out for validation/test" in msg
    assert "lower data.min_examples" in msg


def test_columns_system_prompt_and_format_reach_the_loader(tmp_path):
    rows = [{"q": f"Q{i}", "a": f"A{i}"} for i in range(12)]
    cfg = DataConfig(
        train=str(write(tmp_path / "d.csv", rows)),
        columns={"prompt": "q", "completion": "a"},
        system_prompt="Be short.",
        split=SplitConfig(validation=0, test=0),
    )
    data = prepare_data(cfg, seed=0)
    assert data.format == "prompt_completion" and len(data.train) == 12
    assert [m.role for m in data.train[0].messages] == ["system", "user", "assistant"]
    assert data.stats["files"]["train"]["columns"] == {"prompt": "q", "completion": "a"}


def test_split_and_rejects_files_round_trip(messy, tmp_path):
    data = prepare_data(DataConfig(train=str(messy)), seed=0)
    path = write_split(data.train, tmp_path / "out" / "train.jsonl")
    back = read_split(path)
    assert [ex.to_dict() for ex in back] == [ex.to_dict() for ex in data.train]
    assert back[0].source == data.train[0].source

    rj = write_rejects(data.rejects, tmp_path / "out" / "rejects.jsonl")
    lines = [json.loads(line) for line in rj.read_text().splitlines()]
    assert len(lines) == len(data.rejects)
    assert {"stage", "action", "reason", "where", "field", "record"} <= lines[0].keys()
    assert lines[0]["where"].endswith("messy.jsonl:21") and lines[0]["record"] == "{not json"
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_read_split_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_split(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"kind": "text", "text": "ok"}\n{"text": "no kind"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2 is not a prepared example"):
        read_split(tmp_path / "bad.jsonl")


def test_reason_category():
    assert reason_category("near duplicate (0.93) of tickets.jsonl:17") == "near duplicate"
    assert reason_category("exact duplicate of tickets.jsonl:3") == "exact duplicate"
    assert reason_category("missing field: output") == "missing field"
    assert (
        reason_category("no_assistant_message: messages has no assistant message") == "no_assistant_message"
    )
