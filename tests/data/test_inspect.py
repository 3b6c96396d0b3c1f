"""`tuneforge data inspect`: the report on a file, and its rendering."""

from __future__ import annotations

import json

from rich.console import Console

from tuneforge.data.inspect import inspect_file, render_inspect

from .helpers import write


def review(i: int) -> str:
    return " ".join(f"w{i}x{j}" for j in range(60))  # 60 words, none shared with another review


def rows() -> list[dict]:
    out = [{"text": review(i), "label": "pos" if i % 3 else "neg"} for i in range(12)]
    out.append({"text": out[0]["text"], "label": out[0]["label"]})  # exact duplicate
    out.append({"text": out[1]["text"].replace("w1x30", "other"), "label": out[1]["label"]})  # near duplicate
    out.append({"text": "   ", "label": "pos"})  # empty text
    out.append({"text": "no label"})  # rejected: missing label
    return out


def test_report_counts_everything(tmp_path):
    p = write(tmp_path / "reviews.jsonl", rows())
    (tmp_path / "reviews.jsonl").write_text(p.read_text() + "{broken\n")
    report = inspect_file(p, count_tokens=lambda ex: len((ex.text or "").split()))
    assert (report["format"], report["rows"], report["examples"]) == ("classification", 17, 15)
    assert report["kinds"] == {"classification": 15}
    assert report["labels"] == {"pos": 10, "neg": 5}
    assert report["rejects"]["total"] == 2
    assert report["rejects"]["by_reason"] == {
        "read": {"not valid JSON": 1},
        "normalise": {"missing field": 1},
    }
    assert report["problems"]["by_code"] == {
        "empty_text": {"severity": "error", "count": 1, "first": f"{p}:15"}
    }
    assert report["problems"]["items"][0]["field"] == "text"
    dups = report["duplicates"]
    assert (dups["exact"], dups["near"]) == (1, 1)
    assert [(d["where"], d["of"], d["exact"]) for d in dups["pairs"]] == [
        (f"{p}:13", f"{p}:1", True),
        (f"{p}:14", f"{p}:2", False),
    ]
    lengths = report["lengths"]
    assert lengths["unit"] == "tokens" and (lengths["min"], lengths["max"]) == (0, 60)
    assert sum(lengths["histogram"]["counts"]) == 15
    assert len(lengths["histogram"]["edges"]) == len(lengths["histogram"]["counts"]) + 1
    json.dumps(report)  # plain data, so the CLI can print it as JSON


def test_character_lengths_without_a_tokenizer(tmp_path):
    p = write(tmp_path / "d.jsonl", [{"text": "abc"}, {"text": "abcdef"}])
    lengths = inspect_file(p)["lengths"]
    assert (lengths["unit"], lengths["min"], lengths["max"], lengths["mean"]) == ("characters", 3, 6, 4.5)


def test_chat_roles_and_kto_counts(tmp_path):
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    p = write(tmp_path / "kto.jsonl", [{"messages": msgs, "label": True}, {"messages": msgs, "label": False}])
    report = inspect_file(p, min_examples=1)
    assert report["roles"] == {"user": 2, "assistant": 2}
    assert report["desirable"] == {"true": 1, "false": 1}
    assert report["problems"]["by_code"] == {}


def test_render_prints_tables_and_histogram(tmp_path):
    p = write(tmp_path / "reviews.jsonl", rows())
    console = Console(record=True, width=120, color_system=None)
    render_inspect(inspect_file(p), console)
    out = console.export_text()
    assert str(p) in out and "format classification" in out
    assert "empty_text" in out and "missing field" in out
    assert "duplicates: 1 exact, 1 near" in out
    assert "length in characters" in out and "█" in out
    assert "invalid_n_examples" not in out  # 15 examples is enough
