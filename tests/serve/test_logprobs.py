"""logprobs through the official client, in OpenAI's two shapes: chat (`logprobs`, `top_logprobs`) and text
completions (`logprobs: k`), streamed and whole. The batched engine's values are the model's own (against a
teacher-forced transformers forward), the serial engine gives the same, the vLLM engine maps vLLM's answer (mocked at
its boundary), and out-of-range requests are 400s."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import openai
import pytest
import torch

from tests.jobs.service_fixtures import client, live_server, service_settings
from tests.serve.test_vllm_engine import FAKE, chat_ids
from tuneforge.jobs import store

pytestmark = pytest.mark.timeout(300)
Q = "What is the capital of Peru?"


def _server(tmp: Path, tiny_base: Path, **kw):
    settings = service_settings(tmp, tiny_base, max_concurrent_generations=4, **kw)
    settings.ensure_dirs()
    store.init_db(store.engine_for(settings))
    return live_server(settings)


@pytest.fixture(scope="module")
def batched(tmp_path_factory, tiny_base):
    with _server(tmp_path_factory.mktemp("lp-batched"), tiny_base) as srv:
        yield srv


def chat(srv, **kw):
    kw = {"max_tokens": 8, "temperature": 0, **kw}
    return client(srv).chat.completions.create(model="tiny", messages=[{"role": "user", "content": Q}], **kw)


def test_chat_logprobs_are_the_models_own(batched, tiny_base):
    from transformers import AutoModelForCausalLM

    out = chat(batched, logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens == 8  # max_tokens reached: every token reported
    for e in content:
        assert len(e.top_logprobs) == 3
        assert [t.logprob for t in e.top_logprobs] == sorted(
            (t.logprob for t in e.top_logprobs), reverse=True
        )
        assert e.top_logprobs[0].logprob == pytest.approx(
            e.logprob
        )  # greedy: the chosen token is the top one
        assert e.bytes == list(e.token.encode())

    # against the model itself: the prompt and the answer's tokens, teacher-forced
    prompt = chat_ids(tiny_base, Q)
    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    with torch.no_grad():
        # the greedy tokens are the argmax of each position: rebuild them from the model, step by step
        ids = list(prompt)
        want = []
        for _ in range(8):
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
            t = int(lp.argmax())
            want.append((tok.decode([t]), float(lp[t])))
            ids.append(t)
    assert [e.token for e in content] == [w[0] for w in want]
    for e, (_, value) in zip(content, want, strict=True):
        assert e.logprob == pytest.approx(value, abs=1e-4)


def test_streamed_logprobs_are_the_whole_answers_and_serial_agrees(batched, tiny_base, tmp_path, monkeypatch):
    whole = chat(batched, logprobs=True, top_logprobs=2).choices[0].logprobs.content
    streamed = []
    for chunk in chat(batched, logprobs=True, top_logprobs=2, stream=True):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.content
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in whole]
    # The serial engine answers through transformers' generate, which runs under bf16 autocast on CPUs with fast
    # bf16 (models/load.py); the batched engine computes in the weights' dtype. Pinned to fp32 so the two agree.
    monkeypatch.setattr("tuneforge.models.load.autocast_inference", lambda device: False)
    with _server(tmp_path, tiny_base, engine="serial") as serial:
        other = chat(serial, logprobs=True, top_logprobs=2).choices[0].logprobs.content
    assert [e.token for e in other] == [e.token for e in whole]
    for a, b in zip(other, whole, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [t.token for t in a.top_logprobs] == [t.token for t in b.top_logprobs]


def test_no_logprobs_unless_asked(batched):
    assert chat(batched).choices[0].logprobs is None
    assert chat(batched, logprobs=True).choices[0].logprobs.content[0].top_logprobs == []


def test_completion_logprobs_shape_and_offsets(batched):
    c = client(batched)
    out = c.completions.create(
        model="tiny", prompt="Once upon", max_tokens=6, temperature=0, logprobs=2, echo=True
    )
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert lp.text_offset[0] == len("Once upon")  # the echoed prompt comes first
    for i in range(1, 6):
        assert lp.text_offset[i] == lp.text_offset[i - 1] + len(lp.tokens[i - 1])
    assert all(
        1 <= len(top) <= 2 and max(top.values()) >= v - 1e-6
        for top, v in zip(lp.top_logprobs, lp.token_logprobs, strict=True)
    )
    streamed = [
        ch.choices[0].logprobs
        for ch in c.completions.create(
            model="tiny", prompt="Once upon", max_tokens=6, temperature=0, logprobs=2, stream=True
        )
        if ch.choices and ch.choices[0].logprobs and ch.choices[0].logprobs.tokens
    ]
    assert sum((s.tokens for s in streamed), []) == lp.tokens
    assert sum((s.text_offset for s in streamed), []) == [o - len("Once upon") for o in lp.text_offset]


@pytest.mark.parametrize(
    "kw, error",
    [
        ({"top_logprobs": 2}, openai.BadRequestError),  # without logprobs: true
        (
            {"logprobs": True, "top_logprobs": 21},
            openai.UnprocessableEntityError,
        ),  # out of range, as every field
        ({"logprobs": True, "top_logprobs": -1}, openai.UnprocessableEntityError),
    ],
)
def test_refused_chat_logprobs_name_the_field(batched, kw, error):
    with pytest.raises(error) as e:
        chat(batched, **kw)
    assert "top_logprobs" in str(e.value)


def test_out_of_range_completion_logprobs_are_refused(batched):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client(batched).completions.create(model="tiny", prompt="Hi", max_tokens=2, logprobs=6)
    assert "logprobs" in str(e.value)


def test_vllm_logprobs_are_mapped_back_to_token_ids(tmp_path, tiny_base):
    from transformers import AutoTokenizer

    from tests.serve.fake_vllm import fake_tokens

    record = tmp_path / "record.jsonl"
    with _server(
        tmp_path, tiny_base, engine="vllm", vllm_command=f"{sys.executable} {FAKE}",
        vllm_args=f"--record {record}", vllm_start_timeout_s=60,
    ) as srv:  # fmt: skip
        out = chat(srv, logprobs=True, top_logprobs=3, max_tokens=4)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    tokens = fake_tokens(chat_ids(tiny_base, Q), "base", 0, 4)
    content = out.choices[0].logprobs.content
    assert [e.token for e in content] == [tok.decode([t]) for t in tokens]
    for k, (e, t) in enumerate(zip(content, tokens, strict=True)):
        assert math.isclose(e.logprob, -1.0 - k / 100)
        # vLLM's top entries hold the chosen token beside the k most likely: cut to 3, most likely first
        assert [x.token for x in e.top_logprobs] == [
            tok.decode([t + 1]),
            tok.decode([t]),
            tok.decode([t + 2]),
        ]
    body = [line for line in record.read_text().splitlines() if '"completions"' in line][-1]
    assert '"logprobs": 3' in body and '"return_tokens_as_token_ids": true' in body
