"""One generation at a time per model: the engine before batching, and the path of models and adapters the
batched decoder does not cover. The request's target becomes the model's active adapter (or adapters off for the
base) while it holds the model's lock; `TokenStream` decodes its choices with the transformers forward."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tuneforge.eval.generate import SamplingParams, TokenStream
from tuneforge.models.adapters import adapters_off

if TYPE_CHECKING:
    from tuneforge.serve.engine import Engine, Prepared, Run, Ticket


def generate_serially(
    engine: Engine,
    prep: Prepared,
    ticket: Ticket,
    prompts: list[list[int]],
    params: SamplingParams,
    n: int,
    run: Run,
    put: Callable[[Any], None],
    cancel: threading.Event,
) -> None:
    start = time.perf_counter()
    with ticket, contextlib.ExitStack() as held:
        with engine.counted("serial_waiting"):
            held.enter_context(engine._slots)
            held.enter_context(prep.entry.lock)
        with engine.counted("serial_running"):
            _generate(prep, prompts, params, n, run, put, cancel, engine.metrics, start)


def _generate(prep, prompts, params, n, run, put, cancel, metrics, start) -> None:
    model = prep.entry.lm.model
    if prep.adapter is not None:
        model.set_adapter(prep.adapter)
        ctx: Any = contextlib.nullcontext()
    else:
        ctx = adapters_off(model)
    prep.entry.last_used = time.time()
    lm = replace(prep.entry.lm, tokenizer=prep.tokenizer, stop_token_ids=prep.stop_ids)
    with ctx:
        for k, ids in enumerate(prompts):
            stream = TokenStream(lm, ids, params, n, cancel.is_set, run.choices[k * n : (k + 1) * n])
            last = [None] * n
            for piece in stream:
                now = time.perf_counter()
                i = piece.index - k * n
                metrics.latency(now - (last[i] or start), first=last[i] is None)
                last[i] = now
                put(piece)
            metrics.generated(sum(c.completion_tokens for c in stream.choices))
