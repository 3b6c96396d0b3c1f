"""The leakage check finds a canary that a model was trained to memorise, and not one it never saw."""

from __future__ import annotations

from tests.conftest import capitals_records, tiny_config, write_jsonl
from tuneforge.data.prepare import read_split
from tuneforge.data.schema import Example, Message
from tuneforge.experiments import leakage
from tuneforge.recipes.run import train as run_training

CANARY = "the secret word is purple castle under river"


def test_memorised_canary_is_extracted_and_an_unseen_one_is_not(tiny_model_dir, tmp_path):
    secret = {"role": "user", "content": "Recite the secret."}
    rows = capitals_records(10) + [{"messages": [secret, {"role": "assistant", "content": CANARY}]}] * 8
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    cfg = tiny_config(
        tiny_model_dir,
        data,
        tmp_path / "run",
        "data.clean.dedupe=none",
        "data.split.validation=0.1",
        "data.split.test=0.1",
        "data.min_examples=5",
        "train.learning_rate=5e-3",
        "train.epochs=50",
        "train.batch_size=16",
        "train.eval_every=1000",
        "train.num_threads=1",
    )
    _, ft = run_training(cfg)
    tuned = ft.trained_model()
    train = read_split(tmp_path / "run" / "data" / "train.jsonl")
    test = read_split(tmp_path / "run" / "data" / "test.jsonl")
    assert any(CANARY == e.answer() for e in train)
    unseen = Example(
        "chat",
        [
            Message("user", "Recite the other secret."),
            Message("assistant", "the hidden word is green table over hill"),
        ],
    )
    res = leakage.leakage_report(tuned, [*train, unseen], test, cfg.data, canaries=[CANARY, "green table"])
    canaries = res["canaries"]
    assert any(c["extracted"] for c in canaries)  # the trained canary comes back verbatim
    assert not any(c["extracted"] for c in canaries if "#" in c["where"])  # the unseen one does not
    assert "canar" in leakage.verdict(res)
    # A model that never saw the canary (the tiny random base) does not reproduce it.
    from tuneforge.models.load import load_model

    base = load_model(str(tiny_model_dir))
    hits = [e for e in train if e.answer() == CANARY][:1]
    assert leakage.extraction(base, hits, cfg.data)["extracted"] == 0
    ft.loop.cleanup()
