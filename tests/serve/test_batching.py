"""The batched engine: its forward pass against transformers' (base, LoRA through PEFT, prefill in chunks, rows
of different adapters in one pass), and through the service with the official client: concurrent greedy requests
on different adapters get what they get alone and what the serial engine (transformers + PEFT) gives; seeded
sampling per row; a client that goes away frees its row and its cache; a DoRA adapter is served on the serial
path; the KV budget; /metrics."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch

from tests.jobs.service_fixtures import client, live_server, service_settings, wait_for
from tuneforge.jobs import store
from tuneforge.jobs.store import FineTunedModel
from tuneforge.serve.engine.decoder import Decoder, Segment

pytestmark = pytest.mark.timeout(300)
ADAPTERS = ("ft:tiny:alice:a1", "ft:tiny:alice:a2", "ft:tiny:alice:a3")
DORA = "ft:tiny:alice:dora"
QUESTIONS = [f"Question {i}: what is the capital of country number {i}?" * (1 + i % 3) for i in range(8)]


def make_adapter(base: Path, out: Path, seed: int, dora: bool = False) -> Path:
    """A random LoRA adapter on every projection (B non-zero, so it changes the answers), saved as a run's
    adapter/ folder with the base's tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = LoraConfig(
        r=4 + seed,  # ranks differ between adapters
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
        use_dora=dora,
    )
    peft = get_peft_model(model, cfg)
    folder = out / "adapter"
    peft.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_base, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("adapters")
    runs = {mid: make_adapter(tiny_base, tmp / f"a{i}", i + 1) for i, mid in enumerate(ADAPTERS)}
    runs[DORA] = make_adapter(tiny_base, tmp / "dora", 7, dora=True)
    return runs


def register(settings, adapters: dict[str, Path], kinds: dict[str, str] | None = None) -> None:
    """alice's fine-tuned models: LoRA (DoRA for DORA) unless `kinds` names another training type."""
    sessions = store.session_factory(store.engine_for(settings))
    with store.transaction(sessions) as s:
        for mid, run in adapters.items():
            kind = (kinds or {}).get(mid, "dora" if mid == DORA else "lora")
            s.add(
                FineTunedModel(
                    id=mid,
                    owner="alice",
                    base="tiny",
                    job_id="-",
                    run_dir=str(run),
                    training_type=kind,
                    created_at=0,
                )
            )


def _server(tmp_path_factory, tiny_base, adapters, **overrides):
    settings = service_settings(
        tmp_path_factory.mktemp("batching"),
        tiny_base,
        max_concurrent_generations=16,
        max_queued_generations=16,
        **overrides,
    )
    settings.ensure_dirs()
    store.init_db(store.engine_for(settings))
    register(settings, adapters)
    return live_server(settings)


@pytest.fixture(scope="module")
def batched(tmp_path_factory, tiny_base, adapters):
    with _server(tmp_path_factory, tiny_base, adapters, metrics_token="scrape-me") as srv:
        yield srv


@pytest.fixture(scope="module")
def serial(tmp_path_factory, tiny_base, adapters):
    with _server(tmp_path_factory, tiny_base, adapters, engine="serial") as srv:
        yield srv


def ask(srv, model: str, question: str, **kw) -> str:
    out = client(srv).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=kw.pop("max_tokens", 20),
        temperature=kw.pop("temperature", 0),  # OpenAI's default is 1
        **kw,
    )
    return out.choices[0].message.content


# ------------------------------------------------------------------------------------------ the forward
def test_the_forward_matches_transformers_with_chunked_prefill_lora_and_mixed_rows(tiny_base, adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    dec = Decoder(base)  # before PEFT wraps the layers: it reads the same weights either way
    peft = PeftModel.from_pretrained(base, str(adapters[ADAPTERS[0]] / "adapter")).eval()
    from tuneforge.serve.engine import lora

    weights = lora.load(adapters[ADAPTERS[0]] / "adapter", "a1", torch.float32, torch.device("cpu"))
    ids = torch.arange(100, 117)
    with torch.no_grad():
        with peft.disable_adapter():
            want_base = peft(input_ids=ids[None]).logits[0]
        want_lora = peft(input_ids=ids[None]).logits[0]
    assert (want_base[-1] - want_lora[-1]).abs().max() > 0.1  # the adapter changes the answer

    # base: the prompt in chunks of 5, 5, 7
    cache = dec.new_cache(32)
    for a, b in ((0, 5), (5, 10), (10, 17)):
        got = dec.forward(
            ids[a:b], torch.arange(a, b), [Segment(0, b - a, a, cache, None)], torch.tensor([b - a - 1])
        )
        torch.testing.assert_close(got[0], want_base[b - 1], atol=1e-4, rtol=1e-4)

    # one pass with a base row decoding its next token and a LoRA row prefilling its whole prompt
    nxt = int(want_base[-1].argmax())
    lora_cache = dec.new_cache(32)
    got = dec.forward(
        torch.cat([torch.tensor([nxt]), ids]),
        torch.cat([torch.tensor([17]), torch.arange(17)]),
        [Segment(0, 1, 17, cache, None), Segment(1, 18, 0, lora_cache, weights)],
        torch.tensor([0, 17]),
    )
    with torch.no_grad(), peft.disable_adapter():
        want_next = peft(input_ids=torch.cat([ids, torch.tensor([nxt])])[None]).logits[0, -1]
    torch.testing.assert_close(got[0], want_next, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1], want_lora[-1], atol=1e-4, rtol=1e-4)


def test_adapters_the_batched_path_cannot_apply_are_named(adapters, tmp_path):
    from tuneforge.serve.engine import lora

    assert lora.unsupported(adapters[ADAPTERS[0]] / "adapter") is None
    assert "DoRA" in lora.unsupported(adapters[DORA] / "adapter")
    assert "cannot be read" in lora.unsupported(tmp_path)


# ------------------------------------------------------------------------------------------ the service
def test_concurrent_requests_on_three_adapters_get_what_they_get_alone(batched, serial):
    jobs = [(m, q) for m, q in zip([*ADAPTERS, "tiny"] * 2, QUESTIONS, strict=True)]
    alone = [ask(batched, m, q) for m, q in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda j: ask(batched, *j), jobs))
    assert together == alone
    # the serial engine (transformers + PEFT) answers the same: each row had its own adapter, at its scale
    assert [ask(serial, m, q) for m, q in jobs] == alone
    # and the adapters matter: the same question differs between them
    assert len({ask(batched, m, QUESTIONS[0]) for m in [*ADAPTERS, "tiny"]}) == 4
    engine = batched.app.state.engine
    sched = engine._models["base:tiny"].scheduler
    assert sched is not None and engine.loads["base:tiny"] == 1
    assert sched.budget.used == 0 and not sched.running


def test_seeded_sampling_is_per_row_and_n_choices_differ(batched):
    def sampled(seed: int) -> list[str]:
        out = client(batched).chat.completions.create(
            model=ADAPTERS[1],
            messages=[{"role": "user", "content": QUESTIONS[1]}],
            max_tokens=12,
            temperature=1.0,
            seed=seed,
            n=2,
        )
        return [c.message.content for c in out.choices]

    first = sampled(5)
    with ThreadPoolExecutor(4) as pool:  # beside other rows, a seed gives the same text
        again = list(pool.map(sampled, [5, 6, 5, 7]))
    assert again[0] == again[2] == first
    assert first[0] != first[1]  # the two choices of one seed are not copies


def test_a_client_that_goes_away_frees_its_row_and_cache(batched):
    engine = batched.app.state.engine
    stream = client(batched).chat.completions.create(
        model=ADAPTERS[2], messages=[{"role": "user", "content": "Hi"}], max_tokens=400, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    sched = engine._models["base:tiny"].scheduler
    wait_for(
        lambda: not sched.running and sched.budget.used == 0 and engine.active == 0, 30, "the row to be freed"
    )


def test_a_dora_adapter_is_served_on_the_serial_path_with_its_own_answer(batched, serial, caplog):
    got = ask(batched, DORA, QUESTIONS[2])
    assert got == ask(serial, DORA, QUESTIONS[2])
    assert got != ask(batched, "tiny", QUESTIONS[2])
    adapter = batched.app.state.engine._models["base:tiny"].adapters[DORA]
    assert not adapter.batched


def test_a_request_larger_than_the_kv_budget_is_400_and_small_ones_queue_for_it(
    tmp_path_factory, tiny_base, adapters
):
    # the tiny model's cache is 2 layers x 2 heads x 16 dims x 2 x 4 bytes = 512 bytes a token: 0.1 MB = 204
    with _server(tmp_path_factory, tiny_base, adapters, kv_cache_mb=0.1) as srv:
        sched_budget = 204
        with pytest.raises(openai.BadRequestError) as e:
            client(srv).completions.create(model="tiny", prompt="Hi", max_tokens=450)
        assert "KV cache" in e.value.body["message"] and e.value.body["param"] == "max_tokens"
        # three requests of about 90 tokens each: two fit at once, the third waits for room and then runs
        engine = srv.app.state.engine
        peak = []

        def one(i: int):
            return client(srv).completions.create(
                model="tiny", prompt=f"Hi {i}", max_tokens=90, temperature=0
            )

        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(one, i) for i in range(3)]
            while not all(f.done() for f in futures):
                sched = engine._models["base:tiny"].scheduler
                peak.append((len(sched.running), len(sched.waiting), sched.budget.used))
                time.sleep(0.01)  # the server runs in this process: leave it the interpreter
        outs = [f.result() for f in futures]
        assert sched.budget.total == sched_budget
        assert all(o.usage.completion_tokens >= 1 for o in outs)
        assert max(r for r, _, _ in peak) == 2 and max(w for _, w, _ in peak) >= 1
        assert max(u for _, _, u in peak) <= sched_budget


def test_metrics_show_the_load_and_latencies_to_the_operator(batched):
    ask(batched, ADAPTERS[0], "Hello")
    root = batched.root
    assert httpx.get(f"{root}/metrics").status_code == 401
    r = httpx.get(f"{root}/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = {
        line.split()[0]: float(line.split()[1])
        for line in r.text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["tuneforge_sequences_running"] == 0 and values["tuneforge_sequences_waiting"] == 0
    assert values["tuneforge_completion_tokens_total"] > 0 and values["tuneforge_prompt_tokens_total"] > 0
    assert values["tuneforge_time_to_first_token_seconds_count"] > 0
    assert values["tuneforge_inter_token_latency_seconds_count"] > 0
    assert values["tuneforge_batch_size_count"] > 0 and "tuneforge_tokens_per_second" in values
    assert "ft:tiny" not in r.text  # no tenant's model in any label
