"""Models in memory and the generations that use them.

- One copy of each base model serves the base itself and every LoRA adapter trained on it: adapters are loaded
  into one `PeftModel` (`load_adapter(path, adapter_name=...)`) and switched with `set_adapter`; the base answers
  with adapters disabled. A request for a fine-tuned id never reloads the base.
- A fine-tuned model answers with its own tokenizer (the run's adapter/ or model/ folder carries the chat template
  it was trained with) and stops at its end-of-turn token.
- Fully fine-tuned models are separate copies. At most `max_loaded_models` bases and full models stay in memory
  (least recently used first out).
- Admission: at most `max_concurrent_generations` run at once and `max_queued_generations` wait; a request
  beyond that is refused at once with 429 and Retry-After. Generations on one model take turns (its active
  adapter is shared state), generations on different models run in parallel.
- A request's CPU work before it generates (chat template, tokenisation) runs in threads, at most one per core
  at once (`cpu_work`), never on the event loop: an 8 MB prompt takes seconds to tokenise, and on the loop every
  other request of every tenant would wait for it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread

from tuneforge.models.adapters import adapters_off
from tuneforge.models.load import LoadedModel, load_tokenizer
from tuneforge.models.templates import stop_token_ids
from tuneforge.recipes.runs import load_any
from tuneforge.rundir import RunDir
from tuneforge.serve.errors import overloaded
from tuneforge.settings import Settings

log = logging.getLogger("tuneforge.serve")
R = TypeVar("R")


@dataclass(frozen=True)
class Target:
    """What a model id points at."""

    id: str
    kind: Literal["base", "adapter", "full"]
    base_id: str
    source: str  # what to load: the base's alias/folder/hub id, or the run folder of a full fine-tune
    run_dir: Path | None = None


@dataclass
class _Entry:
    lm: LoadedModel
    context_length: int | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    adapters: dict[str, _Adapter] = field(default_factory=dict)  # model id → adapter
    last_used: float = field(default_factory=time.time)


@dataclass
class _Adapter:
    name: str  # the PEFT adapter name
    tokenizer: Any
    stop_ids: list[int]


@dataclass
class Prepared:
    """A model ready to answer: its tokenizer, context length and how to make it the active one."""

    target: Target
    entry: _Entry
    tokenizer: Any
    stop_ids: list[int]
    adapter: str | None

    @property
    def context_length(self) -> int | None:
        return self.entry.context_length


class Ticket:
    """An admitted request. Leaving its `with` block frees its place."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._open = True

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._open:
            self._open = False
            with self.engine._count_lock:
                self.engine.active -= 1


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._models: OrderedDict[str, _Entry] = OrderedDict()
        self._load_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(settings.max_concurrent_generations)
        self._count_lock = threading.Lock()
        self.active = 0  # admitted: running or waiting
        self.running = 0
        self.loads: Counter[str] = Counter()  # model loads from disk, by key (a base is loaded once)
        # Its own limiter rather than the shared thread pool: many long tokenisations at once must not take the
        # threads that the other routes' sync handlers and dependencies run in.
        self._cpu = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))

    # ---------------------------------------------------------------------------------------- admission
    def admit(self) -> Ticket:
        s = self.settings
        with self._count_lock:
            if self.active >= s.max_concurrent_generations + s.max_queued_generations:
                raise overloaded(s.retry_after_s)
            self.active += 1
        return Ticket(self)

    @property
    def waiting(self) -> int:
        return max(0, self.active - self.running)

    async def cpu_work(self, fn: Callable[..., R], *args: Any) -> R:
        """fn(*args) in a worker thread, off the event loop (see the module's notes)."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._cpu)

    # ------------------------------------------------------------------------------------------- models
    def prepare(self, target: Target) -> Prepared:
        """Load what the target needs (once) and return the handle to generate with. Blocking: call it in a
        thread."""
        if target.kind == "full":
            entry = self._entry(
                f"full:{target.id}", lambda: load_any(str(target.run_dir), device=self.settings.device)
            )
            return Prepared(target, entry, entry.lm.tokenizer, entry.lm.stop_token_ids, None)
        base = self.settings.base_models.get(target.base_id, target.source)
        entry = self._entry(f"base:{target.base_id}", lambda: load_any(base, device=self.settings.device))
        if target.kind == "base":
            return Prepared(target, entry, entry.lm.tokenizer, entry.lm.stop_token_ids, None)
        adapter = entry.adapters.get(target.id)
        if adapter is None:
            with entry.lock:  # the model may be generating: load the adapter between two requests
                adapter = entry.adapters.get(target.id) or self._load_adapter(entry, target)
        return Prepared(target, entry, adapter.tokenizer, adapter.stop_ids, adapter.name)

    def _entry(self, key: str, load) -> _Entry:
        with self._load_lock:
            entry = self._models.get(key)
            if entry is None:
                self._evict()
                t0 = time.time()
                lm = load()
                self.loads[key] += 1
                ctx = getattr(lm.model.config, "max_position_embeddings", None)
                entry = _Entry(lm, ctx)
                self._models[key] = entry
                log.info("loaded %s in %.1f s", key, time.time() - t0)
            self._models.move_to_end(key)
            entry.last_used = time.time()
            return entry

    def _load_adapter(self, entry: _Entry, target: Target) -> _Adapter:
        from peft import PeftModel

        folder = RunDir(target.run_dir).artifact("adapter")
        name = "a_" + "".join(c if c.isalnum() else "_" for c in target.id.rsplit(":", 1)[-1])
        model = entry.lm.model
        if getattr(model, "peft_config", None) is None:
            model = PeftModel.from_pretrained(model, str(folder), adapter_name=name, is_trainable=False)
            model.eval()
            entry.lm = replace(entry.lm, model=model)
        else:
            model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        self.loads[f"adapter:{target.id}"] += 1
        tok, _ = load_tokenizer(str(folder))  # the run's own tokenizer carries its chat template
        adapter = _Adapter(name, tok, stop_token_ids(tok))
        entry.adapters[target.id] = adapter
        return adapter

    def _evict(self) -> None:
        while len(self._models) >= self.settings.max_loaded_models:
            for key, entry in self._models.items():
                if entry.lock.acquire(blocking=False):
                    try:
                        del self._models[key]
                    finally:
                        entry.lock.release()
                    log.info("unloaded %s", key)
                    break
            else:
                return  # every model is busy: keep them all for now
            gc.collect()
            _empty_cuda_cache()

    def forget(self, model_id: str) -> None:
        """Drop a deleted fine-tuned model from memory."""
        with self._load_lock:
            self._models.pop(f"full:{model_id}", None)
            for entry in self._models.values():
                adapter = entry.adapters.get(model_id)
                if adapter is None:
                    continue
                with entry.lock:
                    entry.adapters.pop(model_id, None)
                    with contextlib.suppress(Exception):  # peft refuses to delete the last adapter: keep it
                        entry.lm.model.delete_adapter(adapter.name)

    def loaded(self) -> dict[str, list[str]]:
        return {key: sorted(e.adapters) for key, e in self._models.items()}

    # ---------------------------------------------------------------------------------------- generating
    @contextlib.contextmanager
    def generating(self, prep: Prepared) -> Iterator[LoadedModel]:
        """Wait for a slot and the model, make the target the active model, and give the LoadedModel to use."""
        with self._slots:
            with self._count_lock:
                self.running += 1
            try:
                with prep.entry.lock:
                    model = prep.entry.lm.model
                    if prep.adapter is not None:
                        model.set_adapter(prep.adapter)
                        ctx: Any = contextlib.nullcontext()
                    else:
                        ctx = adapters_off(model)
                    prep.entry.last_used = time.time()
                    with ctx:
                        yield replace(prep.entry.lm, tokenizer=prep.tokenizer, stop_token_ids=prep.stop_ids)
            finally:
                with self._count_lock:
                    self.running -= 1


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
