"""Continuous batching for one loaded model: a thread that runs one step after another, each step one forward
pass over every running sequence.

A step: drop the sequences whose clients went away; admit waiting sequences while the batch has room
(`max_batch_size`) and their KV cache fits the token budget; then one pass that decodes one token for every
sequence past its prompt and, in the same pass, feeds prompt chunks of the sequences still in prefill, at most
`prefill_chunk_tokens` of them per step, so a long prompt delays the others by a bounded amount instead of
stalling them. Each new token is turned into text and handed to its request at once (streaming); a finished
sequence leaves the batch and frees its cache before the next step.

Sampling is per row (its own temperature, top_p, seed); greedy rows are an argmax over the step's logits.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tuneforge.eval.generate import ChoiceText, Piece, SamplingParams, sample, token_logprobs
from tuneforge.serve.engine.decoder import Decoder, Segment
from tuneforge.serve.engine.kv import SequenceCache, TokenBudget
from tuneforge.serve.engine.lora import LoraWeights
from tuneforge.serve.engine.metrics import Metrics

log = logging.getLogger("tuneforge.serve")


@dataclass(eq=False)
class Sequence:
    """One choice of one request, from its prompt to its last token."""

    prompt: list[int]
    params: SamplingParams
    choice: ChoiceText
    lora: LoraWeights | None
    emit: Callable[[Piece], None]  # called in the scheduler's thread
    on_end: Callable[[BaseException | None], None]
    cancelled: Callable[[], bool]
    generator: torch.Generator | None = None
    cache: SequenceCache | None = None
    cached: int = 0  # tokens whose K/V are in the cache
    next_token: int | None = None  # sampled, fed at the next step
    submitted: float = field(default_factory=time.perf_counter)
    last_token_at: float | None = None

    @property
    def need(self) -> int:
        return len(self.prompt) + self.params.max_new_tokens

    @classmethod
    def seeded(cls, params: SamplingParams, index: int, device: torch.device, **kw) -> Sequence:
        """A sequence with its own generator, on the logits' device (multinomial needs them together)."""
        gen = None
        if params.temperature > 0:
            gen = torch.Generator(device=device)
            seed = params.seed if params.seed is not None else secrets.randbits(62)
            gen.manual_seed((seed * 1_000_003 + index) % 2**63)  # the n choices of one seed differ
        return cls(params=params, generator=gen, **kw)


class Scheduler:
    def __init__(
        self, decoder: Decoder, budget_tokens: int, max_batch: int, prefill_chunk: int, metrics: Metrics
    ):
        self.decoder = decoder
        self.budget = TokenBudget(budget_tokens)
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        self.metrics = metrics
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, daemon=True, name="batched-decoder")
        self._thread.start()

    # ------------------------------------------------------------------------------------- outside
    def submit(self, seqs: list[Sequence]) -> None:
        with self._cond:
            self.waiting.extend(seqs)
            self._cond.notify()

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    # -------------------------------------------------------------------------------------- the loop
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self.running and not self.waiting:
                    self._cond.wait()
                if self._closed:
                    for s in [*self.running, *self.waiting]:
                        self._end(s, RuntimeError("the model was unloaded"))
                    return
                self._drop_cancelled()
                self._admit()
            if not self.running:  # all waiting for cache room held by nobody: cannot happen, but never spin
                time.sleep(0.005)
                continue
            try:
                self._step()
            except Exception as e:  # a failed pass fails the sequences in it, not the server
                log.exception("batched step failed")
                for s in list(self.running):
                    self._end(s, e)

    def _drop_cancelled(self) -> None:
        for s in [s for s in self.running if s.cancelled()]:
            self._end(s, None)
        for s in [s for s in self.waiting if s.cancelled()]:
            self.waiting.remove(s)
            self._end(s, None)

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_batch:
            s = self.waiting[0]
            if not self.budget.reserve(s.need):
                break  # first come, first served: a long request is not overtaken forever by short ones
            self.waiting.popleft()
            s.cache = self.decoder.new_cache(s.need)
            self.running.append(s)

    def _end(self, s: Sequence, error: BaseException | None) -> None:
        if s in self.running:
            self.running.remove(s)
            self.budget.release(s.need)
        s.cache = None
        try:
            s.on_end(error)
        except Exception:
            log.exception("a sequence's end callback failed")

    def _plan(
        self,
    ) -> tuple[list[Segment], list[tuple[Sequence, int]], list[int], list[int], list[Sequence], list[int]]:
        """This step's segments (ordered by adapter), how many tokens each sequence feeds, the flat tokens and
        positions, the sequences that get a new token from it and the flat position of each one's last token."""
        parts: list[tuple[Sequence, list[int]]] = []
        budget = self.prefill_chunk
        for s in self.running:
            if s.next_token is not None:
                parts.append((s, [s.next_token]))
            elif budget > 0:
                chunk = s.prompt[s.cached : s.cached + budget]
                budget -= len(chunk)
                parts.append((s, chunk))
        parts.sort(key=lambda p: (p[0].lora is None, id(p[0].lora)))
        segments, fed, tokens, positions, sampled, last = [], [], [], [], [], []
        for s, toks in parts:
            fed.append((s, len(toks)))
            start = len(tokens)
            tokens += toks
            positions += range(s.cached, s.cached + len(toks))
            segments.append(Segment(start, len(tokens), s.cached, s.cache, s.lora))
            if s.next_token is not None or s.cached + len(toks) == len(s.prompt):
                sampled.append(s)
                last.append(len(tokens) - 1)
        return segments, fed, tokens, positions, sampled, last

    def _step(self) -> None:
        segments, fed, tokens, positions, sampled, last = self._plan()
        dev = self.decoder.device
        logits = self.decoder.forward(
            torch.tensor(tokens, device=dev),
            torch.tensor(positions, device=dev),
            segments,
            torch.tensor(last, dtype=torch.long, device=dev),
        )
        for s, count in fed:  # the K/V of every fed token are in the caches now
            s.cached += count
        greedy = logits.argmax(dim=-1).tolist()
        now = time.perf_counter()
        decoding = sum(1 for s in sampled if s.next_token is not None)
        self.metrics.step(len(sampled), len(tokens) - decoding)
        self.metrics.generated(len(sampled))
        for row, s in enumerate(sampled):
            t = (
                greedy[row]
                if s.generator is None
                else int(sample(logits[row : row + 1], s.params, s.generator))
            )
            self.metrics.latency(now - (s.last_token_at or s.submitted), first=s.last_token_at is None)
            s.last_token_at = now
            k = s.params.logprobs
            lp = None if k is None else token_logprobs(logits[row : row + 1], [t], k)[0]
            piece = s.choice.push(t, lp)
            if piece is not None:
                s.emit(piece)
            if not s.choice.done and s.choice.completion_tokens >= s.params.max_new_tokens:
                s.emit(s.choice.finish("length"))
            if s.choice.done:
                self._end(s, None)
            else:
                s.next_token = t
