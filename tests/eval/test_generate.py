"""eval/generate.py on the tiny model: batched, left-padded greedy generation against each prompt decoded
alone by a hand-written argmax loop, the length / end-of-turn / stop-token / stop-string endings with their
token counts, seeded sampling, and the two streaming paths (`stream_chat` and `TokenStream`) against the same
reference answers.

The tiny model's own random init (std 0.02, tied embeddings) greedily repeats the prompt's last token ("\\n")
forever, which would make every comparison below pass trivially; its weights are redrawn larger (seeded) so
that greedy answers are varied text.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.eval.conftest import scramble
from tuneforge.data.schema import Message
from tuneforge.data.tokenize import prompt_text
from tuneforge.eval.generate import Piece, SamplingParams, TokenStream, generate, generate_chats, stream_chat
from tuneforge.models.load import load_model

QUESTIONS = [
    "Hi",
    "What is the capital of France?",
    "Name the capital of Japan, please, and nothing else.",
    "Peru: capital city?",
    "Which city is the capital of Kenya? Answer in one word, without any punctuation.",
]


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    scramble(lm.model)
    return lm


N = 8  # new tokens per answer


@pytest.fixture(scope="module")
def prompts(lm) -> list[str]:
    return [prompt_text(lm.tokenizer, [Message("user", q)]) for q in QUESTIONS]


def greedy_ids(lm, prompt: str, n: int) -> list[int]:
    """n greedy tokens by a plain argmax loop over full forward passes (no cache, no padding, no batch)."""
    ids = lm.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(lm.model(input_ids=ids, logits_to_keep=1).logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


@pytest.fixture(scope="module")
def ref(lm, prompts) -> list[list[int]]:
    """The reference: N greedy token ids of each prompt alone."""
    ids = [greedy_ids(lm, p, N) for p in prompts]
    stops = {lm.tokenizer.eos_token_id, *lm.stop_token_ids}
    assert not any(stops & set(row) for row in ids)  # every reference answer runs to the length limit
    return ids


def text_of(lm, ids: list[int]) -> str:
    return lm.tokenizer.decode(ids, skip_special_tokens=True).strip()


def n_tokens(lm, text: str) -> int:
    return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


class ForceTokenAfter:
    """Forward hook on the LM head: from the (k+1)-th generated token on, `token` is the argmax."""

    def __init__(self, lm, token: int, k: int):
        self.token, self.k, self.calls = token, k, 0
        self.handle = lm.model.get_output_embeddings().register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.calls += 1  # call 1 is the prompt (its last position gives generated token 1)
        if self.calls > self.k:
            output = output.clone()
            output[..., self.token] += 1e4
            return output
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ------------------------------------------------------------------------------------------ generate()
def test_left_padded_batch_equals_each_prompt_alone(lm, prompts, ref):
    assert len({n_tokens(lm, p) for p in prompts}) == len(prompts)  # every row but the longest is padded
    gens = generate(lm, prompts, SamplingParams(max_new_tokens=N))
    assert [g.text for g in gens] == [text_of(lm, r) for r in ref]
    assert len({g.text for g in gens}) == len(prompts)  # distinct answers: the comparison means something
    for p, g in zip(prompts, gens, strict=True):
        assert g.finish_reason == "length"
        assert g.completion_tokens == N
        assert g.prompt_tokens == n_tokens(lm, p)  # the real prompt, not the padded width


def test_max_new_tokens_is_honoured(lm, prompts, ref):
    g = generate(lm, [prompts[2]], SamplingParams(max_new_tokens=3))[0]
    assert (g.text, g.completion_tokens, g.finish_reason) == (text_of(lm, ref[2][:3]), 3, "length")


def test_generate_chats_returns_input_order_across_batches(lm, ref):
    convs = [[Message("user", q)] for q in reversed(QUESTIONS)]  # not in length order
    seen: list[int] = []
    got = generate_chats(lm, convs, SamplingParams(max_new_tokens=N), batch_size=2, on_batch=seen.append)
    assert seen == [2, 2, 1]
    assert [g.text for g in got] == [text_of(lm, r) for r in reversed(ref)]


def test_stop_string_cuts_text(lm, prompts, ref):
    full = text_of(lm, ref[1])
    words = full.split()
    assert len(words) >= 4, full
    g = generate(lm, [prompts[1]], SamplingParams(max_new_tokens=N, stop=["never-there", words[2]]))[0]
    assert g.finish_reason == "stop"
    assert g.text == full[: full.find(words[2])].strip()
    # the earliest of several stop strings wins, whatever their order in the list
    g2 = generate(lm, [prompts[1]], SamplingParams(max_new_tokens=N, stop=[words[3], words[1]]))[0]
    assert g2.text == full[: full.find(words[1])].strip()


def test_stop_string_completion_tokens_within_max_new_tokens(lm, prompts, ref):
    stop = text_of(lm, ref[1]).split()[2]
    g = generate(lm, [prompts[1]], SamplingParams(max_new_tokens=N, stop=[stop]))[0]
    assert g.finish_reason == "stop"
    assert g.completion_tokens <= N


def test_stops_at_the_templates_end_of_turn(lm, prompts, ref):
    im_end = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in lm.stop_token_ids  # load_model found the template's end-of-turn token
    with ForceTokenAfter(lm, im_end, k=3):
        g = generate(lm, [prompts[2]], SamplingParams(max_new_tokens=N))[0]
    assert g.finish_reason == "stop"
    assert g.completion_tokens == 4  # three answer tokens and the end-of-turn token
    assert g.text == text_of(lm, ref[2][:3])


def test_custom_stop_token_ids_end_the_answer(lm, prompts, ref):
    stop_id = ref[3][4]
    k = ref[3].index(stop_id)  # its first occurrence
    other = dataclasses.replace(lm, stop_token_ids=[stop_id])
    g = generate(other, [prompts[3]], SamplingParams(max_new_tokens=N))[0]
    assert g.finish_reason == "stop"
    assert g.completion_tokens == k + 1
    assert g.text == text_of(lm, ref[3][:k])


def test_sampling_is_reproducible_with_a_seed_and_greedy_ignores_it(lm, prompts, ref):
    def sample(seed, temperature=1.0):
        p = SamplingParams(max_new_tokens=N, temperature=temperature, top_p=0.95, seed=seed)
        return generate(lm, [prompts[0]], p)[0].text

    a = sample(1)
    assert a == sample(1)
    assert a != sample(2)  # the seed matters
    assert a != text_of(lm, ref[0])  # it sampled
    assert sample(7, temperature=0.0) == text_of(lm, ref[0])  # temperature 0 is greedy, seed or not


# ----------------------------------------------------------------------------------------- streaming
def test_stream_chat_pieces_join_to_the_greedy_answer(lm, ref):
    pieces = list(stream_chat(lm, [Message("user", QUESTIONS[4])], SamplingParams(max_new_tokens=N)))
    assert len(pieces) > 1  # streamed, not one final string
    assert "".join(pieces).strip() == text_of(lm, ref[4])


@pytest.mark.parametrize(
    "stop", [(), ("never there",)]
)  # an unmatched stop string: held-back text is flushed
def test_token_stream_greedy_equals_the_reference_answer(lm, prompts, ref, stop):
    ids = lm.tokenizer(prompts[1], add_special_tokens=False)["input_ids"]
    stream = TokenStream(lm, ids, SamplingParams(max_new_tokens=N, stop=stop), n=2)
    pieces = list(stream)
    texts = ["".join(p.text for p in pieces if p.index == i) for i in range(2)]
    assert texts == [lm.tokenizer.decode(ref[1], skip_special_tokens=True)] * 2  # greedy: the same answer
    assert stream.prompt_tokens == len(ids)
    assert stream.completion_tokens == [N, N]
    assert stream.finish_reasons == ["length", "length"]
    for i in range(2):  # incremental: several pieces per choice, only the last one carries the reason
        mine = [p for p in pieces if p.index == i]
        assert len(mine) > 1
        assert [p.finish_reason for p in mine] == [None] * (len(mine) - 1) + ["length"]


def test_token_stream_never_streams_past_a_stop_string(lm, prompts, ref):
    ids = lm.tokenizer(prompts[2], add_special_tokens=False)["input_ids"]
    full = lm.tokenizer.decode(ref[2], skip_special_tokens=True)
    words = full.split()
    assert len(words) >= 4, full
    stop = words[2] + " " + words[3]  # a two-word stop string: streaming must hold back its start
    stream = TokenStream(lm, ids, SamplingParams(max_new_tokens=N, stop=[stop]))
    pieces = list(stream)
    assert "".join(p.text for p in pieces) == full[: full.find(stop)]
    assert all(stop not in p.text for p in pieces)
    assert stream.finish_reasons == ["stop"]
    assert pieces[-1].finish_reason == "stop"


@pytest.mark.parametrize("stop", [(), ("a stop string that never comes",)])
def test_token_stream_stops_at_end_of_turn(lm, prompts, ref, stop):
    # with a stop string configured, text is held back while it might be the string's start; the end of
    # turn must flush it
    tok = lm.tokenizer
    ids = tok(prompts[0], add_special_tokens=False)["input_ids"]
    with ForceTokenAfter(lm, tok.convert_tokens_to_ids("<|im_end|>"), k=3):
        stream = TokenStream(lm, ids, SamplingParams(max_new_tokens=N, stop=stop))
        text = stream.texts()[0]
    assert stream.finish_reasons == ["stop"]
    assert stream.completion_tokens == [4]
    assert text == tok.decode(ref[0][:3], skip_special_tokens=True)


def test_token_stream_seeded_sampling_uses_its_own_generator(lm, prompts):
    ids = lm.tokenizer(prompts[1], add_special_tokens=False)["input_ids"]

    def run(seed):
        return TokenStream(lm, ids, SamplingParams(max_new_tokens=N, temperature=1.0, seed=seed), n=2).texts()

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = run(5)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left alone
    assert a == run(5)
    assert a[0] != a[1]  # the choices of one request are separate samples
    assert run(6) != a


def test_token_stream_cancel_and_empty_prompt(lm, prompts):
    ids = lm.tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    stream = TokenStream(lm, ids, SamplingParams(max_new_tokens=N), should_cancel=lambda: True)
    assert list(stream) == []
    assert stream.finish_reasons == [None]
    polls = iter([False, False, True])  # the client goes away after two tokens
    stream = TokenStream(lm, ids, SamplingParams(max_new_tokens=N), should_cancel=lambda: next(polls))
    pieces: list[Piece] = list(stream)
    assert stream.completion_tokens == [2]
    assert all(p.finish_reason is None for p in pieces)
    with pytest.raises(ValueError):
        TokenStream(lm, [], SamplingParams())
