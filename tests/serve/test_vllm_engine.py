"""The vLLM engine (`engine: vllm`) with vLLM mocked at its boundary: tests/serve/fake_vllm.py stands in for
`vllm serve` (its command line and the HTTP routes tuneforge calls), so these tests check what tuneforge asks of
vLLM and what it makes of the answers — the base and each LoRA adapter as requests to one server per base, a full
fine-tune on a server of its own, the prompt as the same token ids the other engines use, sampling and stop
options, streaming, a client that goes away, refusals — not vLLM itself. The same API against a real vLLM is
tests/serve/test_vllm_real.py (marked `vllm`)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.jobs.service_fixtures import ALICE, client, live_server, service_settings, wait_for
from tests.serve.fake_vllm import fake_tokens
from tests.serve.test_batching import ADAPTERS, DORA, adapters, ask, make_adapter, register  # noqa: F401
from tuneforge.data.schema import Message
from tuneforge.data.tokenize import prompt_text
from tuneforge.jobs import store

pytestmark = pytest.mark.timeout(300)
FAKE = Path(__file__).with_name("fake_vllm.py")
RANK9 = "ft:tiny:alice:rank9"
FULL = "ft:tiny:alice:full"


def _settings(tmp: Path, tiny_base: Path, record: Path, extra: str = "", **kw):
    settings = service_settings(
        tmp,
        tiny_base,
        engine="vllm",
        vllm_command=f"{sys.executable} {FAKE}",
        vllm_args=f"--record {record} --max-lora-rank 8 {extra}",  # the operator's rank wins over tuneforge's
        vllm_start_timeout_s=60,
        max_concurrent_generations=8,
        max_queued_generations=8,
        **kw,
    )
    settings.ensure_dirs()
    store.init_db(store.engine_for(settings))
    return settings


@pytest.fixture(scope="module")
def runs(adapters, tiny_base, tmp_path_factory) -> dict[str, Path]:  # noqa: F811 - the imported fixture
    tmp = tmp_path_factory.mktemp("vllm-runs")
    full = tmp / "full"
    shutil.copytree(tiny_base, full / "model")
    return {**adapters, RANK9: make_adapter(tiny_base, tmp / "rank9", 5), FULL: full}  # rank 4 + 5


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_base, runs):
    tmp = tmp_path_factory.mktemp("vllm")
    settings = _settings(tmp, tiny_base, tmp / "record.jsonl")
    register(settings, runs, kinds={FULL: "full"})
    with live_server(settings) as server:
        server.record = tmp / "record.jsonl"
        yield server


def records(server, kind: str) -> list[dict]:
    lines = server.record.read_text().splitlines() if server.record.exists() else []
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def expected(tiny_base: Path, prompt: list[int], model: str, choice: int, count: int) -> str:
    tok = AutoTokenizer.from_pretrained(tiny_base)
    return tok.decode(fake_tokens(prompt, model, choice, count), skip_special_tokens=True)


def chat_ids(tiny_base: Path, question: str) -> list[int]:
    """The prompt as every engine tokenises it (the chat template of the model's own tokenizer)."""
    from tuneforge.models.load import load_tokenizer

    tok, _ = load_tokenizer(str(tiny_base))
    return tok(prompt_text(tok, [Message(role="user", content=question)]), add_special_tokens=False)[
        "input_ids"
    ]


def test_base_and_adapters_are_requests_to_one_vllm_server_per_base(srv, tiny_base, runs):
    q = "What is the capital of France?"
    ids = chat_ids(tiny_base, q)
    assert ask(srv, "tiny", q, max_tokens=12) == expected(tiny_base, ids, "base", 0, 12)
    for mid in (ADAPTERS[0], ADAPTERS[1], ADAPTERS[0]):
        assert ask(srv, mid, q, max_tokens=12) == expected(tiny_base, ids, mid, 0, 12)

    starts = records(srv, "start")
    assert len(starts) == 1 and starts[0]["model_path"] == str(tiny_base)  # one server for base + adapters
    argv = starts[0]["argv"]
    assert "--enable-lora" in argv and argv[argv.index("--served-model-name") + 1] == "base"
    loads = records(srv, "load_lora")
    assert [r["lora_name"] for r in loads] == [ADAPTERS[0], ADAPTERS[1]]  # each loaded once, on first call
    assert loads[0]["lora_path"] == str(runs[ADAPTERS[0]] / "adapter")

    sent = records(srv, "completions")
    assert [r["body"]["model"] for r in sent] == ["base", ADAPTERS[0], ADAPTERS[1], ADAPTERS[0]]
    body = sent[0]["body"]
    assert body["prompt"] == ids  # the token ids the in-process engines would feed
    assert body["temperature"] == 0 and body["max_tokens"] == 12 and body["n"] == 1
    assert body["return_token_ids"] is True and body["stream"] is True
    tok = AutoTokenizer.from_pretrained(tiny_base)
    assert tok.convert_tokens_to_ids("<|im_end|>") in body["stop_token_ids"]


def test_sampling_options_n_stop_and_streaming_reach_vllm(srv, tiny_base):
    q = "Name a river."
    ids = chat_ids(tiny_base, q)
    c = client(srv)
    out = c.chat.completions.create(
        model=ADAPTERS[2],
        messages=[{"role": "user", "content": q}],
        max_tokens=10,
        n=2,
        seed=7,
        temperature=0.8,
        top_p=0.9,
    )
    assert [ch.message.content for ch in out.choices] == [
        expected(tiny_base, ids, ADAPTERS[2], j, 10) for j in (0, 1)
    ]
    assert out.usage.completion_tokens == 20
    body = records(srv, "completions")[-1]["body"]
    assert (body["n"], body["seed"], body["temperature"], body["top_p"]) == (2, 7, 0.8, 0.9)

    whole = expected(tiny_base, ids, "base", 0, 16)
    stop = whole[len(whole) // 2 : len(whole) // 2 + 3]
    cut = c.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": q}], max_tokens=16, temperature=0, stop=[stop]
    )
    assert cut.choices[0].message.content == whole[: whole.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert records(srv, "completions")[-1]["body"]["stop"] == [stop]

    stream = c.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": q}], max_tokens=16, temperature=0, stream=True
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == whole

    # two prompts, n=2: four choices numbered prompt * n + choice, as vLLM numbers them
    tok = AutoTokenizer.from_pretrained(tiny_base)
    done = c.completions.create(model="tiny", prompt=["one two", "three"], max_tokens=5, n=2, temperature=0)
    prompts = [tok("one two")["input_ids"], tok("three")["input_ids"]]
    assert [ch.text for ch in sorted(done.choices, key=lambda ch: ch.index)] == [
        expected(tiny_base, prompts[i // 2], "base", i % 2, 5) for i in range(4)
    ]


def test_adapters_vllm_cannot_take_are_served_here_serially(srv, tiny_base):
    for mid in (DORA, RANK9, RANK9):
        assert isinstance(ask(srv, mid, "Hello?", max_tokens=4), str)
    loads = [r["lora_name"] for r in records(srv, "load_lora")]
    assert DORA not in loads  # refused before asking vLLM (it has no DoRA kernels)
    assert loads.count(RANK9) == 1  # vLLM refused it once (rank 9 > 8); not asked again
    assert all(r["body"]["model"] not in (DORA, RANK9) for r in records(srv, "completions"))


def test_a_full_fine_tune_gets_a_vllm_server_of_its_own(srv, tiny_base, runs):
    ids = chat_ids(tiny_base, "Hi")
    assert ask(srv, FULL, "Hi", max_tokens=6) == expected(tiny_base, ids, "base", 0, 6)
    assert str(runs[FULL] / "model") in [r["model_path"] for r in records(srv, "start")]


def test_a_client_that_goes_away_aborts_the_vllm_request(srv):
    c = client(srv)
    with c.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Tell me a long story."}],
        max_tokens=150,
        temperature=0,
        stream=True,
    ) as stream:
        for i, _ in enumerate(stream):
            if i == 3:
                break
    wait_for(lambda: records(srv, "aborted"), 10, "the fake vLLM to see the stream closed")
    wait_for(lambda: srv.app.state.engine.active == 0, 10, "the request to give its place back")


def test_what_vllm_refuses_is_a_400_naming_vllm(srv):
    with pytest.raises(openai.BadRequestError) as e:
        ask(srv, "tiny", "Hi", max_tokens=250)  # within the model's context, beyond the fake's
    assert "vLLM refused the request" in str(e.value) and "maximum context length" in str(e.value)
    assert srv.app.state.engine.active == 0


def test_a_vllm_that_cannot_start_is_a_503_with_its_log(tmp_path, tiny_base):
    settings = _settings(tmp_path, tiny_base, tmp_path / "record.jsonl", "--exit-at-start")
    with live_server(settings) as server:
        r = httpx.post(
            f"{server.url}/chat/completions",
            headers={"Authorization": f"Bearer {ALICE}"},
            json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]},
            timeout=60,
        )
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert "exited with code 3" in message and "refusing to start" in message  # the child's own last words
    assert server.app.state.engine.active == 0
