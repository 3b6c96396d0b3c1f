"""Cleaning: whitespace, missing values, exact and near duplicates, length limits — each drop with its reason."""

from __future__ import annotations

from tuneforge.config import CleanConfig
from tuneforge.data.clean import clean, find_duplicates, normalize_text
from tuneforge.data.formats import load_file
from tuneforge.data.schema import Example, Message, Source

from .helpers import write

STORY = (
    "The support team received a ticket about a billing error on the March invoice. The customer said the "
    "amount charged was twice the agreed monthly price and asked for a refund to the original card. The "
    "agent checked the account history, confirmed the duplicate charge, issued the refund and wrote back "
    "within the hour with an apology and the reference number for the transaction."
)


def chat(user: str, answer: str, line: int | None = None) -> Example:
    src = Source("t.jsonl", (line or 1) - 1, line) if line else None
    return Example("chat", [Message("user", user), Message("assistant", answer)], source=src)


def test_normalize_text():
    raw = "  Caf\u0065\u0301 \x00menu\x07:  soup   and\tbread  \r\n\r\n    indented   code\x1b\r\nend\u00a0 "
    assert normalize_text(raw) == "Caf\u00e9 menu: soup and\tbread\n\n    indented code\nend"  # NFC: one é


def test_whitespace_normalised_in_every_text_field():
    ex = Example(
        "preference",
        [Message("user", " Hi  there ")],
        chosen=[Message("assistant", "Yes\x00 ")],
        rejected=[Message("assistant", "  No")],
    )
    cls = Example("classification", text="  great \x0c movie ", label=" positive ")
    res = clean([ex, cls], CleanConfig(dedupe="none"))
    out, cls_out = res.examples
    assert (out.messages[0].content, out.chosen[0].content, out.rejected[0].content) == (
        "Hi there",
        "Yes",
        "No",
    )
    assert (cls_out.text, cls_out.label) == ("great movie", "positive")
    assert res.stats["whitespace_normalised"] == 2
    assert ex.messages[0].content == " Hi  there "  # the input is not modified


def test_whitespace_normalisation_can_be_turned_off():
    res = clean([chat(" a  b ", "c")], CleanConfig(normalize_whitespace=False, dedupe="none"))
    assert res.examples[0].messages[0].content == " a  b "


def test_missing_values_filled_or_dropped(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("instruction,input,output\nAdd,1 2,3\nSay hi,,Hi\n")
    examples = load_file(p).examples

    filled = clean(examples, CleanConfig(missing="fill", dedupe="none"))
    assert len(filled.examples) == 2 and filled.stats["filled"] == 1
    (r,) = filled.rejects
    assert (r.action, r.stage, r.field, r.source.line) == ("filled", "clean", "input", 3)
    assert r.reason == "missing value: input filled with an empty string"
    assert filled.examples[1].messages[0].content == "Say hi"

    dropped = clean(examples, CleanConfig(missing="drop", dedupe="none"))
    assert len(dropped.examples) == 1 and dropped.stats["dropped_missing"] == 1
    (r,) = dropped.rejects
    assert (r.action, r.field, r.source.line) == ("dropped", "input", 3)
    assert r.reason == "missing value: input is empty (clean.missing=drop)"


def test_exact_duplicates_keep_the_first():
    examples = [
        chat("Hi", "Hello", 1),
        chat("Bye", "Ciao", 2),
        chat("Hi", "Hello", 3),
        chat("Hi  ", "Hello", 4),
    ]
    res = clean(examples, CleanConfig(dedupe="exact"))
    assert [ex.source.line for ex in res.examples] == [1, 2]
    assert [(r.source.line, r.reason) for r in res.rejects] == [
        (3, "exact duplicate of t.jsonl:1"),
        (4, "exact duplicate of t.jsonl:1"),  # equal once whitespace is normalised
    ]
    assert res.stats["duplicates_exact"] == 2


def test_near_duplicate_differing_by_one_word():
    variant = STORY.replace("apology", "explanation")
    other = STORY.replace("billing error on the March invoice", "login problem after the password reset")
    examples = [chat("Summarise", STORY, 1), chat("Summarise", other, 2), chat("Summarise", variant, 3)]
    res = clean(examples, CleanConfig(dedupe="near", near_threshold=0.9))
    assert [ex.source.line for ex in res.examples] == [1, 2]
    (r,) = res.rejects
    assert r.source.line == 3 and r.stage == "clean" and r.action == "dropped"
    assert r.reason.startswith("near duplicate (0.9") and r.reason.endswith(") of t.jsonl:1")
    assert res.stats == {**res.stats, "duplicates_near": 1}

    assert clean(examples, CleanConfig(dedupe="exact")).examples == examples  # exact mode keeps the variant
    assert len(clean(examples, CleanConfig(dedupe="near", near_threshold=0.99)).examples) == 3


def test_shared_system_prompt_does_not_make_records_near_duplicates():
    system = Message("system", STORY * 3)
    a = Example("chat", [system, Message("user", "What is 2+2?"), Message("assistant", "4")])
    b = Example("chat", [system, Message("user", "Name a colour."), Message("assistant", "Blue")])
    assert find_duplicates([a, b], near=True, threshold=0.8) == []


def test_find_duplicates_reports_pairs():
    examples = [chat("x", STORY), chat("x", STORY), chat("x", STORY.replace("hour", "day"))]
    dups = find_duplicates(examples, near=True, threshold=0.8)
    assert [(d.index, d.of, d.exact) for d in dups] == [(1, 0, True), (2, 0, False)]
    assert 0.8 <= dups[1].similarity < 1


def test_length_filter_in_tokens():
    examples = [chat("a", "b", 1), chat("one two three", "four five six", 2), chat(STORY, STORY, 3)]
    words = lambda ex: len(ex.all_text().split())  # noqa: E731 - a stand-in tokenizer
    res = clean(examples, CleanConfig(dedupe="none", min_tokens=5, max_tokens=50), count_tokens=words)
    assert [ex.source.line for ex in res.examples] == [2]
    assert [(r.source.line, r.reason) for r in res.rejects] == [
        (1, "too short: 4 tokens < clean.min_tokens=5"),
        (3, f"too long: {words(examples[2])} tokens > clean.max_tokens=50"),
    ]
    assert res.stats["too_short"] == 1 and res.stats["too_long"] == 1
    # Without a token counter the limits cannot be applied, and nothing is dropped.
    assert len(clean(examples, CleanConfig(dedupe="none", min_tokens=5)).examples) == 3


def test_every_record_is_kept_or_rejected(tmp_path):
    rows = [{"text": f"doc {i} " + STORY} for i in range(5)] + [{"text": "doc 0 " + STORY}, {"text": "x"}]
    examples = load_file(write(tmp_path / "d.jsonl", rows)).examples
    res = clean(examples, CleanConfig(min_tokens=3), count_tokens=lambda ex: len(ex.text.split()))
    dropped = [r for r in res.rejects if r.action == "dropped"]
    assert len(res.examples) + len(dropped) == len(examples)
    assert res.stats["records_in"] == 7 and res.stats["records_out"] == len(res.examples)
    assert {r.source.line for r in dropped} >= {6, 7}
