"""The classification recipe on tiny models: an encoder (BERT-shaped, MiniLM's tokenizer) and the tiny decoder.
It learns (loss falls, accuracy beats the majority class), reports accuracy, per-class P/R/F1 and a confusion
matrix, and the saved classifier loads back with the same predictions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config, write_jsonl
from tuneforge import api

WORDS = {
    "positive": ["great", "love", "excellent", "happy", "wonderful"],
    "negative": ["awful", "hate", "broken", "terrible", "angry"],
    "neutral": ["arrived", "tuesday", "box", "order", "address"],
}


def sentiment_records(n: int = 120, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(WORDS)[i % 3]
        words = rng.sample(WORDS[label], 2) + rng.sample(["the", "it", "was", "my", "a", "this"], 2)
        rng.shuffle(words)
        rows.append({"text": f"{i}: " + " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT with all-MiniLM-L6-v2's tokenizer and random weights."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tuneforge.models.registry import minilm_path

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
    )
    out = tmp_path_factory.mktemp("tiny-encoder")
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _cfg(model_dir: Path, tmp_path: Path, *overrides: str):
    data = write_jsonl(tmp_path / "sentiment.jsonl", sentiment_records())
    return tiny_config(
        model_dir,
        data,
        tmp_path / "run",
        "method.name=classifier",
        "data.format=classification",
        "train.epochs=6",
        "train.eval_every=10",
        *overrides,
    )


@pytest.mark.parametrize(
    "model, overrides",
    [
        ("encoder", ["train.learning_rate=1e-2"]),
        ("decoder", ["method.adapter=lora", "method.r=8", "train.learning_rate=1e-2"]),
    ],
)
def test_classifier_learns_reports_and_reloads(
    model, overrides, tiny_encoder_dir, tiny_wide_init_dir, tmp_path
):
    from tuneforge.recipes.runs import load_run_classifier

    model_dir = tiny_encoder_dir if model == "encoder" else tiny_wide_init_dir
    cfg = _cfg(model_dir, tmp_path, *overrides)
    summary = api.finetune(cfg, show=False)
    run = tmp_path / "run"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    loss = [r["loss"] for r in rows if "loss" in r]
    print(model, loss[:3], loss[-3:])
    assert sum(loss[-3:]) / 3 < 0.6 * sum(loss[:3]) / 3, loss
    report = json.loads((run / "report.json").read_text())
    majority, tuned = report["variants"][0]["metrics"], report["variants"][1]["metrics"]
    print(model, majority["accuracy"], tuned["accuracy"])
    assert tuned["accuracy"] > majority["accuracy"] + 0.3
    assert set(tuned["per_class"]) == set(WORDS)
    assert {"precision", "recall", "f1", "support"} <= set(tuned["per_class"]["positive"])
    cm = tuned["confusion"]
    assert cm["labels"] == sorted(WORDS) and sum(map(sum, cm["matrix"])) == report["n_test"]
    html = (run / "report.html").read_text()
    assert "Confusion" in html and "Per class" in html
    assert summary["report"]["n_test"] == report["n_test"]
    artifact = run / "model"
    assert (artifact / "labels.json").is_file()
    if "method.adapter=lora" in overrides:  # a standard PEFT adapter, head included
        assert (artifact / "adapter_config.json").is_file()
    # reloaded from the run folder, the classifier gives the reported predictions
    clf, tok, labels = load_run_classifier(run)
    clf.eval()
    test = [json.loads(x) for x in (run / "data" / "test.jsonl").read_text().splitlines()]
    enc = tok([t["text"] for t in test], return_tensors="pt", padding=True)
    with torch.no_grad():
        pred = clf(**enc).logits.argmax(-1).tolist()
    acc = sum(labels[p] == t["label"] for p, t in zip(pred, test, strict=True)) / len(test)
    assert acc == pytest.approx(tuned["accuracy"], abs=1e-6)
    # `tuneforge eval RUN` scores a classifier run with its own evaluation
    again = api.compare_models(str(run), None, show=False)
    assert again["variants"][1]["metrics"]["accuracy"] == pytest.approx(tuned["accuracy"], abs=1e-6)


def test_classifier_backbone_is_the_saved_one(tiny_model_dir, tmp_path):
    """A tied decoder written by save_model_folder (as the GGUF conversion writes it) gives a classification head
    its trained embeddings; a folder that lacks them is refused instead of training from random embeddings."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.errors import ModelError
    from tuneforge.models.classifier import load_classifier
    from tuneforge.models.load import save_model_folder

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    out = tmp_path / "converted"
    save_model_folder(lm, out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    weights = out / "model.safetensors"
    state = load_file(weights)
    assert "model.embed_tokens.weight" in state and "lm_head.weight" not in state
    clf, _ = load_classifier(str(out), ["a", "b"])
    assert torch.equal(clf.model.embed_tokens.weight, lm.model.embed_tokens.weight)
    again = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(again.lm_head.weight, lm.lm_head.weight)

    state["lm_head.weight"] = state.pop("model.embed_tokens.weight")  # the layout conversions used to write
    save_file(state, str(weights))
    with pytest.raises(ModelError, match="embed_tokens"):
        load_classifier(str(out), ["a", "b"])
