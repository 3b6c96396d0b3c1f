"""Splitting: seeded, deterministic, stratified, no overlap, sizes right."""

from __future__ import annotations

from collections import Counter

import pytest

from tuneforge.data.schema import Example, Message, Source
from tuneforge.data.split import split, strata_key, stratified_by


def classified(counts: dict[str, int]) -> list[Example]:
    out = []
    for label, n in counts.items():
        for _ in range(n):
            i = len(out)
            out.append(
                Example("classification", text=f"text {i}", label=label, source=Source("d.jsonl", i, i + 1))
            )
    return out


def chats(n: int, answer=lambda i: f"answer {i}") -> list[Example]:
    return [
        Example(
            "chat",
            [Message("user", f"q {i}"), Message("assistant", answer(i))],
            source=Source("c.jsonl", i, i + 1),
        )
        for i in range(n)
    ]


def ids(examples: list[Example]) -> list[int]:
    return [ex.source.index for ex in examples]


def test_sizes_and_no_overlap():
    parts = split(chats(100), validation=0.1, test=0.2, seed=0)
    assert {k: len(v) for k, v in parts.items()} == {"train": 70, "validation": 10, "test": 20}
    all_ids = ids(parts["train"]) + ids(parts["validation"]) + ids(parts["test"])
    assert sorted(all_ids) == list(range(100))
    assert ids(parts["train"]) == sorted(ids(parts["train"]))  # each split keeps the file order


def test_deterministic_for_a_seed_and_different_for_another():
    data = chats(50)
    a = split(data, 0.2, 0.2, seed=1)
    b = split(data, 0.2, 0.2, seed=1)
    c = split(data, 0.2, 0.2, seed=2)
    assert {k: ids(v) for k, v in a.items()} == {k: ids(v) for k, v in b.items()}
    assert ids(a["test"]) != ids(c["test"])


def test_stratified_by_label_keeps_proportions():
    data = classified({"a": 60, "b": 30, "c": 10})
    parts = split(data, validation=0.1, test=0.2, seed=3)
    assert Counter(ex.label for ex in parts["test"]) == {"a": 12, "b": 6, "c": 2}
    assert Counter(ex.label for ex in parts["validation"]) == {"a": 6, "b": 3, "c": 1}
    assert Counter(ex.label for ex in parts["train"]) == {"a": 42, "b": 21, "c": 7}


def test_unstratified_split_of_the_same_data_drifts():
    data = classified({"a": 60, "b": 30, "c": 10})
    drift = []
    for seed in range(10):
        test = split(data, 0.1, 0.2, seed=seed, stratify="none")["test"]
        drift.append(Counter(ex.label for ex in test) != {"a": 12, "b": 6, "c": 2})
    assert any(drift)  # proportions hold above by design, not by luck


def test_class_too_small_to_split_stays_in_train():
    data = classified({"a": 40, "b": 40, "rare": 2})
    parts = split(data, validation=0.1, test=0.1, seed=0)
    assert [ex.label for ex in parts["train"]].count("rare") == 2
    assert len(parts["validation"]) == 8 and len(parts["test"]) == 8


def test_every_asked_for_split_gets_one_example():
    parts = split(chats(5), validation=0.05, test=0.05, seed=0)
    assert {k: len(v) for k, v in parts.items()} == {"train": 3, "validation": 1, "test": 1}
    parts = split(chats(2), validation=0.1, test=0.1, seed=0)  # too few for three splits: train keeps one
    assert len(parts["train"]) >= 1 and sum(len(v) for v in parts.values()) == 2


def test_zero_fractions_for_separate_files():
    parts = split(chats(10), validation=0, test=0, seed=0)
    assert len(parts["train"]) == 10 and parts["validation"] == [] and parts["test"] == []
    parts = split(chats(10), validation=0.2, test=0, seed=0)
    assert (len(parts["train"]), len(parts["validation"]), len(parts["test"])) == (8, 2, 0)


def test_auto_stratifies_answers_when_they_are_few_values():
    yes_no = chats(40, answer=lambda i: "yes" if i % 4 else "no")  # 30 yes, 10 no
    parts = split(yes_no, validation=0.1, test=0.2, seed=5)
    assert Counter(ex.answer() for ex in parts["test"]) == {"yes": 6, "no": 2}
    assert strata_key(yes_no, "auto")(yes_no[0]) == "no"
    free = chats(40)  # every answer different: nothing to stratify on
    assert strata_key(free, "auto")(free[0]) == ""


def test_unknown_mode_and_bad_fractions():
    with pytest.raises(ValueError, match="unknown stratify mode"):
        split(chats(10), 0.1, 0.1, seed=0, stratify="length")
    with pytest.raises(ValueError, match="sum to less than 1"):
        split(chats(10), 0.5, 0.5, seed=0)


def test_min_and_max_validation_clamp_the_fraction():
    assert len(split(chats(20), 0.1, 0, seed=0, min_validation=5)["validation"]) == 5  # 2 raised to 5
    assert (
        len(split(chats(100), 0.1, 0, seed=0, min_validation=5)["validation"]) == 10
    )  # share above the floor
    assert len(split(chats(100), 0.1, 0, seed=0, max_validation=4)["validation"]) == 4
    assert len(split(chats(100), 0.2, 0.1, seed=0, max_validation=4)["test"]) == 10  # test keeps its share
    parts = split(chats(4), 0.1, 0, seed=0, min_validation=5)  # never everything: train keeps one
    assert (len(parts["train"]), len(parts["validation"])) == (1, 3)
    assert split(chats(20), 0, 0, seed=0, min_validation=5)["validation"] == []  # only when asked for
    with pytest.raises(ValueError, match="max_validation"):
        split(chats(20), 0.1, 0, seed=0, min_validation=5, max_validation=3)


def test_clamped_split_is_seeded_and_stratified():
    yes_no = chats(60, answer=lambda i: "yes" if i % 3 else "no")  # 40 yes, 20 no
    a = split(yes_no, 0.05, 0, seed=1, min_validation=6)
    assert Counter(ex.answer() for ex in a["validation"]) == {"yes": 4, "no": 2}
    assert ids(a["validation"]) == ids(split(yes_no, 0.05, 0, seed=1, min_validation=6)["validation"])
    assert ids(a["validation"]) != ids(split(yes_no, 0.05, 0, seed=2, min_validation=6)["validation"])
    capped = split(classified({"a": 600, "b": 300, "c": 100}), 0.5, 0, seed=0, max_validation=10)
    assert Counter(ex.label for ex in capped["validation"]) == {"a": 6, "b": 3, "c": 1}


def test_stratified_by_names_what_the_split_used():
    assert stratified_by(classified({"a": 30, "b": 10})) == "label"
    assert stratified_by(chats(40, answer=lambda i: "yes" if i % 4 else "no")) == "answer"
    assert stratified_by(chats(40)) == "none"
    assert stratified_by(classified({"a": 1, "b": 1, "c": 1})) == "none"  # too small to divide: random
