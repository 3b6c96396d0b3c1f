"""Batched generation for evaluation, chat and the service.

Prompts are rendered with the model's chat template, left-padded (so every row's next token sits in the last
column) and decoded together with a KV cache. Rows are grouped by length so little compute goes to padding.
Generation stops at the template's end-of-turn token as well as at EOS.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tuneforge.data.schema import Message
from tuneforge.data.tokenize import prompt_text
from tuneforge.models.load import LoadedModel, inference_autocast


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn / stop string) or "length"
    seconds: float = 0.0


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    # None: not asked; k: each chosen token's log-probability and the k most likely tokens beside it
    logprobs: int | None = None


@torch.no_grad()
def generate(lm: LoadedModel, prompts: Sequence[str], params: SamplingParams) -> list[Generation]:
    """Generate for already-rendered prompt strings, in one batch."""
    tok, model = lm.tokenizer, lm.model
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
    finally:
        tok.padding_side = old_side
    kwargs: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "eos_token_id": lm.stop_token_ids or tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    if params.temperature > 0:
        kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        if params.seed is not None:
            torch.manual_seed(params.seed)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    t0 = time.time()
    with inference_autocast(lm.device):
        out = model.generate(**enc, **kwargs)
    dt = time.time() - t0
    width = enc["input_ids"].shape[1]
    results = []
    stops = set(lm.stop_token_ids)
    for row, mask in zip(out, enc["attention_mask"], strict=True):
        new = row[width:].tolist()
        n_prompt = int(mask.sum())
        # Every token generated counts, the end-of-turn token too; a stop string cuts the text, not the count.
        end = next((k for k, t in enumerate(new) if t in stops), None)
        n_completion = len(new) if end is None else end + 1
        if end is not None:
            new = new[:end]
        text, hit = _cut_at_stop(tok.decode(new, skip_special_tokens=True), params.stop)
        finish = "stop" if end is not None or hit else "length"
        results.append(Generation(text.strip(), n_prompt, n_completion, finish, dt))
    return results


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def generate_chats(
    lm: LoadedModel,
    conversations: Sequence[Sequence[Message]],
    params: SamplingParams,
    batch_size: int = 16,
    tools: Sequence[list | None] | None = None,
    on_batch: Any = None,
) -> list[Generation]:
    """Answer many conversations; results come back in input order."""
    prompts = [prompt_text(lm.tokenizer, c, tools[i] if tools else None) for i, c in enumerate(conversations)]
    lengths = [len(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, g in zip(idx, generate(lm, [prompts[i] for i in idx], params), strict=True):
            results[i] = g
        if on_batch:
            on_batch(len(idx))
    return results  # type: ignore[return-value]


def stream_chat(lm: LoadedModel, messages: Sequence[Message], params: SamplingParams) -> Iterator[str]:
    """Yield the answer's text as it is generated (for `tuneforge chat` and streaming responses)."""
    from threading import Thread

    from transformers import TextIteratorStreamer

    tok, model = lm.tokenizer, lm.model
    enc = tok(prompt_text(tok, messages), return_tensors="pt", add_special_tokens=False).to(lm.device)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kwargs: dict[str, Any] = dict(
        **enc,
        max_new_tokens=params.max_new_tokens,
        eos_token_id=lm.stop_token_ids or tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        streamer=streamer,
    )
    if params.temperature > 0:
        kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)

    def run() -> None:
        with torch.no_grad(), inference_autocast(lm.device):
            model.generate(**kwargs)

    thread = Thread(target=run, daemon=True)
    thread.start()
    yield from streamer
    thread.join()


# ------------------------------------------------------------------------------- token-level streaming
@dataclass
class Piece:
    """A piece of text of choice `index`; `finish_reason` is set on the last piece of that choice. `logprobs`: the
    tokens generated since the previous piece, when the request asked for them."""

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class TokenLogprob:
    """A generated token's log-probability under the model (before temperature and top-p, as OpenAI and vLLM
    report it) and the `top` most likely tokens at its position, as (token id, logprob)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprobs(logits: torch.Tensor, tokens: Sequence[int], k: int) -> list[TokenLogprob]:
    """For each row of `logits` [rows, vocab]: the logprob of tokens[row] and the k most likely tokens."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(1, torch.tensor(list(tokens), device=lp.device).view(-1, 1)).view(-1).tolist()
    if k:
        values, ids = lp.topk(k, dim=-1)
        tops = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    else:
        tops = [[] for _ in chosen]
    return [TokenLogprob(t, c, top) for t, c, top in zip(tokens, chosen, tops, strict=True)]


class ChoiceText:
    """The text of one choice as its tokens arrive: `push(token)` returns the next piece to send, or None.

    Stop tokens end the choice without appearing; stop strings cut the text without ever sending a partial match
    (the last `hold` characters wait until they cannot start one); half of a multi-byte character waits for the
    rest. Shared by TokenStream and the service's batched engine, so both stream exactly the same pieces.
    """

    def __init__(self, tokenizer: Any, index: int, stop_ids: set[int], stop_strings: Sequence[str]):
        self.tok, self.index, self.stop_ids = tokenizer, index, stop_ids
        self.stop_strings = [s for s in stop_strings if s]
        self.hold = max((len(s) for s in self.stop_strings), default=1) - 1
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already sent
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._logprobs: list[TokenLogprob] = []  # of the tokens not yet in a piece

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int, logprob: TokenLogprob | None = None) -> Piece | None:
        """`logprob`: the token's, when the request asked for them (the end-of-turn token's is not reported)."""
        self.completion_tokens += 1  # every token generated counts, the end-of-turn token too
        if token in self.stop_ids:
            return self.finish("stop")
        self.ids.append(token)
        if logprob is not None:
            self._logprobs.append(logprob)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        cut = min((text.find(s) for s in self.stop_strings if s in text), default=-1)
        if cut >= 0:
            self.finish_reason = "stop"
            return self._piece(text[self.sent : max(cut, self.sent)], "stop")
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return None
        upto = len(text) - self.hold if self.stop_strings else len(text)
        if upto > self.sent:
            piece = self._piece(text[self.sent : upto])
            self.sent = upto
            return piece
        return None

    def finish(self, reason: str) -> Piece:
        """The rest of the text (what `hold` kept back) as the choice's last piece."""
        self.finish_reason = reason
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        return self._piece(text[self.sent :], reason)

    def _piece(self, text: str, reason: str | None = None) -> Piece:
        piece = Piece(self.index, text, reason, self._logprobs)
        self._logprobs = []
        return piece


class TokenStream:
    """Sample `n` answers to one prompt token by token, yielding text pieces as they are decoded.

    For the service: every request gets its own seeded `torch.Generator` (no global RNG state is touched, so
    concurrent requests do not disturb each other's seeds), stop strings are cut without ever streaming a
    partial match, and `prompt_tokens`, `completion_tokens` and `finish_reasons` are known once it is exhausted.
    `should_cancel()` is polled between tokens (a client that went away stops the generation).

        stream = TokenStream(lm, prompt_ids, SamplingParams(max_new_tokens=64, temperature=0.7, seed=1), n=2)
        for piece in stream: ...
    """

    def __init__(
        self,
        lm: LoadedModel,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        n: int = 1,
        should_cancel: Any = None,
        choices: list[ChoiceText] | None = None,
    ):
        """`choices`: the n ChoiceText to fill (a caller that counts their tokens); made here if not given."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        self.lm, self.params, self.n = lm, params, n
        self.prompt_ids = list(prompt_ids)
        self.prompt_tokens = len(self.prompt_ids)
        stops = set(lm.stop_token_ids or [lm.tokenizer.eos_token_id])
        self.choices = choices or [ChoiceText(lm.tokenizer, i, stops, params.stop) for i in range(n)]
        self.should_cancel = should_cancel or (lambda: False)

    @property
    def completion_tokens(self) -> list[int]:
        return [c.completion_tokens for c in self.choices]

    @property
    def finish_reasons(self) -> list[str | None]:
        return [c.finish_reason for c in self.choices]

    def texts(self) -> list[str]:
        """Run to the end; the full text of every choice."""
        out = [""] * self.n
        for p in self:
            out[p.index] += p.text
        return out

    @torch.no_grad()
    def __iter__(self) -> Iterator[Piece]:
        lm, params, n = self.lm, self.params, self.n
        model, device = lm.model, lm.device
        gen = torch.Generator(device=device)
        gen.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
        ids = torch.tensor([self.prompt_ids] * n, device=device)
        past = None
        for _ in range(params.max_new_tokens):
            if self.should_cancel():
                return
            with inference_autocast(device):
                out = model(input_ids=ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1, :].float()
            nxt = sample(logits, params, gen).tolist()
            lps = token_logprobs(logits, nxt, params.logprobs) if params.logprobs is not None else [None] * n
            for choice, t, lp in zip(self.choices, nxt, lps, strict=True):
                if not choice.done and (piece := choice.push(t, lp)) is not None:
                    yield piece
            if all(c.done for c in self.choices):
                return
            ids = torch.tensor(nxt, device=device).view(n, 1)
        for choice in self.choices:
            if not choice.done:
                yield choice.finish("length")


def sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> torch.Tensor:
    """Greedy at temperature 0, else temperature + nucleus (top-p) sampling with the request's generator."""
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(dim=-1) - sorted_p < params.top_p  # the first token is always kept
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).view(-1)
