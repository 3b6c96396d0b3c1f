"""Shared fixtures: the real SmolLM2 tokenizer and a tiny randomly initialised model built on it.

The tiny model (2 layers, width 64) trains in seconds on CPU, which lets the unit tests exercise the real
loop, checkpoints and evaluation. The real-model tests live in tests/e2e and are marked `slow`.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PEER_DATA = REPO.parent / "shared" / "peer-data" / "llamafactory"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Many tests train with train.num_threads=1 (fast on a busy 2-core machine), which sets torch's thread count for
# the whole process. Put it back after each test: later tests compare in-process runs with subprocess runs that
# use the default, and a different thread count changes float sums in the last bits.
DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    torch.set_num_threads(DEFAULT_THREADS)


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    """The converted SmolLM2-135M-Instruct folder (converted from the bundled GGUF once per machine)."""
    from tuneforge.models.load import ensure_converted
    from tuneforge.models.registry import resolve

    return ensure_converted(resolve("smollm2-135m"))


@pytest.fixture(scope="session")
def smol_tokenizer(smol_dir):
    from tuneforge.models.load import load_tokenizer

    return load_tokenizer(str(smol_dir))[0]


def build_tiny_llama(smol_dir: Path, out: Path, **config) -> Path:
    """Save a 2-layer Llama with SmolLM2's tokenizer and chat template, random weights, to `out`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(smol_dir))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **config,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_dir) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template, random weights, saved as a local folder."""
    return build_tiny_llama(smol_dir, tmp_path_factory.mktemp("tiny-model"))


CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Chile": "Santiago",
    "Spain": "Madrid",
}


ASKS = [  # ways of asking for a capital
    "Capital of {c}?",
    "What is the capital of {c}?",
    "{c}: capital city?",
    "Name the capital of {c}.",
    "Which city is the capital of {c}?",
    "capital {c}",
    "Tell me {c}'s capital.",
    "{c} capital please",
]


def capitals_records(n: int = 64, seed: int = 0) -> list[dict]:
    """A toy task a tiny model learns in seconds: name the capital, phrased a few ways."""
    rng = random.Random(seed)
    rows = []
    pairs = [(c, a) for c in CAPITALS for a in ASKS]
    rng.shuffle(pairs)
    for c, a in pairs[:n]:
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": a.format(c=c)},
                    {"role": "assistant", "content": CAPITALS[c]},
                ]
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def capitals_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "capitals.jsonl", capitals_records())


def tiny_config(tiny_model_dir: Path, data: Path, run_dir: Path, *overrides: str):
    """A run config for the tiny model that trains in a few seconds."""
    from tuneforge.config import apply_overrides
    from tuneforge.recipes.build import build_config

    base = {
        "run_dir": str(run_dir),
        "seed": 0,
        "model": {"name": str(tiny_model_dir)},
        "data": {
            "train": str(data),
            "split": {"validation": 0.15, "test": 0.15},
            "clean": {"dedupe": "exact"},
            "max_length": 64,
        },
        "method": {"name": "full"},
        "train": {
            "learning_rate": 3e-3,
            "epochs": 4,
            "batch_size": 8,
            "eval_every": 5,
            "early_stopping_patience": None,  # these tests train their full length; test_auto covers `auto`
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "compile": False,  # tests/train/test_compile.py covers the compiled step
        },
        "eval": {"max_new_tokens": 6, "few_shot": 0, "samples": 2},
    }
    return build_config(apply_overrides(base, list(overrides)), "test")


# ------------------------------------------------------------------------------------------- classification
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
    import torch
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


def classifier_config(model_dir: Path, tmp_path: Path, run_dir: Path, *overrides: str):
    """A classification-head run on the sentiment records (a tiny encoder learns it in seconds)."""
    data = write_jsonl(tmp_path / "sentiment.jsonl", sentiment_records())
    return tiny_config(
        model_dir,
        data,
        run_dir,
        "method.name=classifier",
        "data.format=classification",
        "train.epochs=6",
        "train.eval_every=10",
        *overrides,
    )


def kill_mid_run(cfg, tmp_path: Path, min_step: int) -> tuple[list[str], dict[str, str]]:
    """A real crash: `tuneforge train` on `cfg` in a child process, killed with SIGKILL as soon as it has written a
    complete checkpoint at `min_step` or later. Returns the command and environment that resume it."""
    import signal
    import subprocess
    import sys
    import time

    from tuneforge.config import dump_config

    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(dump_config(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "tuneforge.cli", "train", str(cfg_path), "--no-eval"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = Path(cfg.run_dir) / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = [d for d in ckpts.glob("step-*") if (d / "manifest.json").exists()] if ckpts.exists() else []
        if any(int(d.name.split("-")[1]) >= min_step for d in done):
            break
        time.sleep(0.01)
    assert proc.poll() is None, (
        "training finished before it could be killed: " + proc.stderr.read().decode()[-500:]
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (Path(cfg.run_dir) / "train_done.json").exists()
    return cmd, env
