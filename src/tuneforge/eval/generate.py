"""Batched generation for evaluation, chat and the service.

Prompts are rendered with the model's chat template, left-padded (so every row's next token sits in the last
column) and decoded together with a KV cache. Rows are grouped by length so little compute goes to padding.
Generation stops at the template's end-of-turn token as well as at EOS.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tuneforge.data.schema import Message
from tuneforge.data.tokenize import prompt_text
from tuneforge.models.load import LoadedModel


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


def adapters_off(model: Any):
    """Context in which a PEFT model answers as its base model — the same weights, no second copy."""
    if hasattr(model, "disable_adapter") and getattr(model, "peft_config", None):
        return model.disable_adapter()
    return contextlib.nullcontext()


@contextlib.contextmanager
def adapters_merged(model: Any):
    """Fold LoRA-style adapters into the base weights while generating (about 1.6x faster decoding on CPU),
    then unfold them. Methods that cannot merge (prompt learning) run unmerged."""
    merged = False
    if getattr(model, "peft_config", None) and hasattr(model, "merge_adapter"):
        try:
            model.merge_adapter()
            merged = True
        except (ValueError, NotImplementedError, AttributeError):
            merged = False
    try:
        yield model
    finally:
        if merged:
            model.unmerge_adapter()


def _autocast(device: torch.device):
    from tuneforge.models.load import cpu_has_fast_bf16

    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    with _autocast(lm.device):
        out = model.generate(**enc, **kwargs)
    dt = time.time() - t0
    width = enc["input_ids"].shape[1]
    results = []
    stops = set(lm.stop_token_ids)
    for row, mask in zip(out, enc["attention_mask"], strict=True):
        new = row[width:].tolist()
        n_prompt = int(mask.sum())
        finish = "length"
        for k, t in enumerate(new):
            if t in stops:
                new, finish = new[:k], "stop"
                break
        text = tok.decode(new, skip_special_tokens=True)
        text, hit = _cut_at_stop(text, params.stop)
        if hit:
            finish = "stop"
        results.append(
            Generation(text.strip(), n_prompt, len(new) + (1 if finish == "stop" else 0), finish, dt)
        )
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
        with torch.no_grad(), _autocast(lm.device):
            model.generate(**kwargs)

    thread = Thread(target=run, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
