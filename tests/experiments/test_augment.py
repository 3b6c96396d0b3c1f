"""Augmentation: rewrites filtered, templates applied to the training split only, the effect measured."""

from __future__ import annotations

import json

from tests.conftest import tiny_config
from tuneforge.data.schema import Example, Message
from tuneforge.experiments import augment as A


def _ex(q, a="Paris"):
    return Example("chat", [Message("system", "Be brief."), Message("user", q), Message("assistant", a)])


def test_paraphrases_keep_the_answer_and_drop_bad_rewrites():
    train = [_ex("What is the capital of France?"), _ex("Name the capital of Peru.", "Lima")]

    def fake_generate(convs, seed):  # what a model might answer, good and bad
        assert "What is the capital of France?" in convs[0][0].content
        return (
            ["Which city is France's capital?", "Name the capital of Peru."] if seed == 0 else ["", "x" * 200]
        )

    new, dropped = A.paraphrases(train, fake_generate, n=2)
    assert [m.content for m in new[0].messages] == ["Be brief.", "Which city is France's capital?", "Paris"]
    assert len(new) == 1 and new[0].meta["augmented"] == "paraphrase"
    assert dropped == {"same as the original": 1, "empty": 1, "length": 1}


def test_templates_vary_the_prompt_only():
    out = A.template_variants([_ex("Capital of Japan?", "Tokyo")], ["Hello, {prompt}", "{prompt} Thanks."], 2)
    assert sorted(e.messages[1].content for e in out) == [
        "Capital of Japan? Thanks.",
        "Hello, Capital of Japan?",
    ]
    assert all(e.answer() == "Tokyo" for e in out)


def test_measured_augmentation_trains_twice_on_the_same_held_out_split(
    tiny_model_dir, capitals_file, tmp_path
):
    cfg = tiny_config(
        tiny_model_dir,
        capitals_file,
        tmp_path / "run",
        "train.learning_rate=1e-2",
        "train.epochs=3",
        "train.num_threads=1",
    )
    report = A.augment(cfg, n_paraphrases=0, per_example_templates=1, out=tmp_path / "aug", show=False)
    files = {k: [json.loads(x) for x in open(v)] for k, v in report["files"].items()}
    n = len(files["train"])
    assert len(files["augmented_train"]) == 2 * n and report["added"]["template"] == n
    assert files["augmented_train"][:n] == files["train"]  # originals first, unchanged
    held_out = {json.dumps(r) for r in files["test"]} | {json.dumps(r) for r in files["validation"]}
    assert not held_out & {json.dumps(r) for r in files["augmented_train"]}  # nothing added to held-out data
    o, a = report["runs"]["original"], report["runs"]["augmented"]
    assert a["train_examples"] == 2 * o["train_examples"] and a["steps"] > o["steps"]
    for k, d in report["delta"].items():
        assert abs(d - (a["headline"][k] - o["headline"][k])) < 1e-9
    # the control: the original split trained for as many steps as the augmented one
    same = report["runs"]["original_same_steps"]
    assert same["steps"] == a["steps"] and same["train_examples"] == o["train_examples"]
    for k, d in report["delta_same_steps"].items():
        assert abs(d - (a["headline"][k] - same["headline"][k])) < 1e-9
    md = (tmp_path / "aug" / "augment.md").read_text()
    assert "| training examples |" in md and "| original, as many steps |" in md


def test_augmentation_of_a_classifier_config_is_measured_with_the_head(tiny_encoder_dir, tmp_path):
    from tests.conftest import classifier_config

    cfg = classifier_config(
        tiny_encoder_dir, tmp_path, tmp_path / "run", "train.epochs=2", "train.learning_rate=1e-2"
    )
    report = A.augment(cfg, n_paraphrases=0, per_example_templates=1, out=tmp_path / "aug", show=False)
    o, a = report["runs"]["original"], report["runs"]["augmented"]
    assert a["train_examples"] == 2 * o["train_examples"]
    assert set(o["headline"]) == {"accuracy", "macro-F1"}  # scored as a classifier, not by generated text
    assert report["delta"]["accuracy"] == a["headline"]["accuracy"] - o["headline"]["accuracy"]
    assert (tmp_path / "aug" / "augmented" / "model" / "labels.json").is_file()
