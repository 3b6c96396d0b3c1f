"""Models in memory and the generations that use them.

- One copy of each base model serves the base itself and every LoRA adapter trained on it. A request for a
  fine-tuned id never reloads the base. Fully fine-tuned models are separate copies. At most
  `max_loaded_models` bases and full models stay in memory (least recently used first out).
- A fine-tuned model answers with its own tokenizer (the run's adapter/ or model/ folder carries the chat template
  it was trained with) and stops at its end-of-turn token.
- Two ways to generate (`settings.engine`):
  - batched (the default): a scheduler per loaded model decodes all its running sequences in one forward pass
    per token, requests joining and leaving between steps, each row with its own LoRA adapter (or none) and its
    own sampling (scheduler.py, decoder.py, lora.py, kv.py). Models outside the Llama family, and adapters
    that are not plain LoRA (DoRA, IA3, prompt tuning), fall back to serial, with the reason logged once.
  - serial: the adapter is loaded into a `PeftModel` (`load_adapter` / `set_adapter`) and one generation at a
    time runs per model (serial.py) — the engine before batching, kept for comparison and as the fallback.
  - vllm: a vLLM server per base model (and per full fine-tune) does the generating, LoRA adapters hot-loaded
    into it (vllm.py); adapters vLLM refuses are served serially here, with vLLM's reason logged once.
- Admission: at most `max_concurrent_generations` + `max_queued_generations` requests are admitted; beyond
  that a request is refused at once with 429 and Retry-After.
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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread

from tuneforge.eval.generate import ChoiceText, SamplingParams
from tuneforge.models.load import LoadedModel, base_path_for, load_tokenizer
from tuneforge.models.registry import resolve
from tuneforge.models.templates import stop_token_ids
from tuneforge.recipes.runs import load_any
from tuneforge.rundir import RunDir
from tuneforge.serve.engine import decoder, lora
from tuneforge.serve.engine.metrics import Metrics, counted
from tuneforge.serve.engine.scheduler import Scheduler, Sequence
from tuneforge.serve.engine.vllm import BASE, VllmServer
from tuneforge.serve.errors import APIError, overloaded
from tuneforge.settings import Settings

log = logging.getLogger("tuneforge.serve")
R = TypeVar("R")
DONE = object()  # the last item a generation hands to its request, after every piece


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
    lock: threading.Lock = field(default_factory=threading.Lock)  # the serial path's turn on this model
    adapters: dict[str, _Adapter] = field(default_factory=dict)  # model id → adapter
    scheduler: Scheduler | None = None  # None: this model generates serially
    loras: OrderedDict[str, lora.LoraWeights] = field(default_factory=OrderedDict)  # batched adapters, LRU
    last_used: float = field(default_factory=time.time)


@dataclass
class _Adapter:
    name: str  # the PEFT adapter name (serial path) or the model id (batched)
    tokenizer: Any
    stop_ids: list[int]
    folder: Path
    batched: bool


@dataclass
class Prepared:
    """A model ready to answer: its tokenizer, context length, and how it generates."""

    target: Target
    entry: _Entry | None  # None: a vLLM server generates (remote)
    tokenizer: Any
    stop_ids: list[int]
    adapter: str | None  # the PEFT adapter name on the serial path
    lora: lora.LoraWeights | None = None  # the adapter's weights on the batched path
    remote: VllmServer | None = None
    remote_model: str = BASE  # what to ask the vLLM server for: its own model, or an adapter's model id

    @property
    def context_length(self) -> int | None:
        return (self.remote or self.entry).context_length

    @property
    def batched(self) -> bool:
        return (
            self.entry is not None
            and self.entry.scheduler is not None
            and (self.target.kind != "adapter" or self.lora is not None)
        )


class Ticket:
    """An admitted request. Leaving its `with` block (or close()) frees its place."""

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


class Run:
    """One request's generation: its choices, and what it hands to `put` (pieces, then DONE or an error)."""

    def __init__(self, choices: list[ChoiceText]):
        self.choices = choices

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)


class Engine:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._models: OrderedDict[str, _Entry] = OrderedDict()
        self._load_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(settings.max_concurrent_generations)
        self._count_lock = threading.Lock()
        self.active = 0  # admitted: running or waiting
        self.serial_running = 0  # serial generations generating
        self.serial_waiting = 0  # serial generations waiting for a slot or their model's turn
        self.remote_running = 0  # generations a vLLM server is doing
        self._remote: OrderedDict[str, VllmServer] = OrderedDict()  # vLLM servers by model key, LRU
        self.loads: Counter[str] = Counter()  # model loads from disk, by key (a base is loaded once)
        self._fallbacks: set[str] = set()  # reasons already logged
        # Its own limiter rather than the shared thread pool: many long tokenisations at once must not take the
        # threads that the other routes' sync handlers and dependencies run in.
        self._cpu = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
        self.metrics = Metrics(lambda: (self.running, self.waiting))

    # ---------------------------------------------------------------------------------------- admission
    def admit(self) -> Ticket:
        s = self.settings
        with self._count_lock:
            if self.active >= s.max_concurrent_generations + s.max_queued_generations:
                self.metrics.refused.inc()
                raise overloaded(s.retry_after_s)
            self.active += 1
        self.metrics.requests.inc()
        return Ticket(self)

    @property
    def running(self) -> int:
        return self.serial_running + self.remote_running + sum(len(s.running) for s in self._schedulers())

    @property
    def waiting(self) -> int:
        return self.serial_waiting + sum(len(s.waiting) for s in self._schedulers())

    def _schedulers(self) -> list[Scheduler]:
        return [e.scheduler for e in list(self._models.values()) if e.scheduler is not None]

    def counted(self, attr: str):
        """self.<attr> counts this generation while the block runs (read by /metrics and /health/ready)."""
        return counted(self, attr, self._count_lock)

    async def cpu_work(self, fn: Callable[..., R], *args: Any) -> R:
        """fn(*args) in a worker thread, off the event loop (see the module's notes)."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._cpu)

    # ------------------------------------------------------------------------------------------- models
    def prepare(self, target: Target) -> Prepared:
        """Load what the target needs (once) and return the handle to generate with. Blocking: call it in a
        thread."""
        if self.settings.engine == "vllm":
            prep = self._prepare_remote(target)
            if prep is not None:
                return prep  # else an adapter vLLM refuses: served here, serially
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
            with entry.lock:  # the serial path may be generating: load the adapter between two requests
                adapter = entry.adapters.get(target.id) or self._load_adapter(entry, target)
        if not adapter.batched:
            return Prepared(target, entry, adapter.tokenizer, adapter.stop_ids, adapter.name)
        return Prepared(
            target, entry, adapter.tokenizer, adapter.stop_ids, None, self._lora(entry, target.id)
        )

    def _prepare_remote(self, target: Target) -> Prepared | None:
        if target.kind == "full":
            folder = RunDir(target.run_dir).artifact("model")
            if not folder.is_dir():  # IA3, prompt tuning ...: adapters vLLM has no kernels for
                self._fall_back(
                    f"{target.id} is served here, serially, not by vLLM: not a LoRA or a full model"
                )
                return None
            server = self._server(f"full:{target.id}", str(folder))
        else:
            base = self.settings.base_models.get(target.base_id, target.source)
            server = self._server(f"base:{target.base_id}", base_path_for(resolve(base)))
        if target.kind != "adapter":
            return Prepared(target, None, server.tokenizer, server.stop_ids, None, remote=server)
        adapter = server.load_lora(target.id, RunDir(target.run_dir).artifact("adapter"))
        if isinstance(adapter, str):
            self._fall_back(f"adapter {target.id} is served here, serially, not by vLLM: {adapter}")
            return None
        tok, stops = adapter
        return Prepared(target, None, tok, stops, None, remote=server, remote_model=target.id)

    def _server(self, key: str, model_path: str) -> VllmServer:
        """The vLLM server of a base model or a full fine-tune, started on first use (and again if it died);
        at most `max_loaded_models` run at once, the least recently used idle one stopped first."""
        with self._load_lock:
            server = self._remote.get(key)
            if server is not None and not server.alive:
                log.warning("vLLM for %s exited (code %s): starting it again", key, server.proc.returncode)
                server.close()
                del self._remote[key]
                server = None
            if server is None:
                while len(self._remote) >= self.settings.max_loaded_models:
                    idle = next((k for k, v in self._remote.items() if v.running == 0), None)
                    if idle is None:
                        break  # every server is busy: run one more for now
                    self._remote.pop(idle).close()
                    log.info("stopped vLLM for %s", idle)
                t0 = time.time()
                server = VllmServer(key, model_path, self.settings, self.settings.data_dir / "logs")
                self.loads[key] += 1
                log.info("vLLM for %s ready in %.1f s", key, time.time() - t0)
                self._remote[key] = server
            self._remote.move_to_end(key)
            return server

    def close(self) -> None:
        """Stop what runs beside the server: the schedulers' threads and the vLLM servers."""
        with self._load_lock:
            for entry in self._models.values():
                if entry.scheduler is not None:
                    entry.scheduler.close()
            self._models.clear()
            while self._remote:
                self._remote.popitem()[1].close()

    def _entry(self, key: str, load) -> _Entry:
        with self._load_lock:
            entry = self._models.get(key)
            if entry is None:
                self._evict()
                t0 = time.time()
                lm = load()
                self.loads[key] += 1
                ctx = getattr(lm.model.config, "max_position_embeddings", None)
                entry = _Entry(lm, ctx, scheduler=self._scheduler_for(key, lm))
                self._models[key] = entry
                log.info("loaded %s in %.1f s", key, time.time() - t0)
            self._models.move_to_end(key)
            entry.last_used = time.time()
            return entry

    def _scheduler_for(self, key: str, lm: LoadedModel) -> Scheduler | None:
        s = self.settings
        if s.engine != "batched":
            return None
        reason = decoder.unsupported(lm.model)
        if reason:
            self._fall_back(f"{key} generates serially: {reason}")
            return None
        dec = decoder.Decoder(lm.model)
        budget = int(s.kv_cache_mb * 1024 * 1024) // dec.cache_bytes_per_token()
        return Scheduler(dec, budget, s.max_batch_size, s.prefill_chunk_tokens, self.metrics)

    def _fall_back(self, why: str) -> None:
        if why not in self._fallbacks:
            self._fallbacks.add(why)
            log.warning(why)

    def _load_adapter(self, entry: _Entry, target: Target) -> _Adapter:
        folder = RunDir(target.run_dir).artifact("adapter")
        tok, _ = load_tokenizer(str(folder))  # the run's own tokenizer carries its chat template
        reason = lora.unsupported(folder) if entry.scheduler is not None else None
        if entry.scheduler is not None and reason is None:
            adapter = _Adapter(target.id, tok, stop_token_ids(tok), folder, batched=True)
        else:
            if reason:
                self._fall_back(f"adapter {target.id} generates serially: {reason}")
            adapter = _Adapter(
                self._peft_load(entry, folder, target.id), tok, stop_token_ids(tok), folder, False
            )
        self.loads[f"adapter:{target.id}"] += 1
        entry.adapters[target.id] = adapter
        return adapter

    def _peft_load(self, entry: _Entry, folder: Path, model_id: str) -> str:
        from peft import PeftModel

        name = "a_" + "".join(c if c.isalnum() else "_" for c in model_id.rsplit(":", 1)[-1])
        model = entry.lm.model
        if getattr(model, "peft_config", None) is None:
            model = PeftModel.from_pretrained(model, str(folder), adapter_name=name, is_trainable=False)
            model.eval()
            entry.lm = replace(entry.lm, model=model)
        else:
            model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        return name

    def _lora(self, entry: _Entry, model_id: str) -> lora.LoraWeights:
        """The adapter's weights for the batched path, read once and kept while it is among the
        `max_loaded_adapters` most recently used (a running sequence keeps its own reference)."""
        with self._load_lock:
            weights = entry.loras.get(model_id)
            if weights is None:
                dec = entry.scheduler.decoder
                weights = lora.load(entry.adapters[model_id].folder, model_id, dec.dtype, dec.device)
                entry.loras[model_id] = weights
                while len(entry.loras) > self.settings.max_loaded_adapters:
                    entry.loras.popitem(last=False)
            entry.loras.move_to_end(model_id)
            return weights

    def _evict(self) -> None:
        while len(self._models) >= self.settings.max_loaded_models:
            for key, entry in self._models.items():
                if entry.lock.acquire(blocking=False):
                    try:
                        if entry.scheduler is not None and entry.scheduler.busy:
                            continue
                        del self._models[key]
                        if entry.scheduler is not None:
                            entry.scheduler.close()
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
            full = self._models.pop(f"full:{model_id}", None)
            if full is not None and full.scheduler is not None:
                full.scheduler.close()
            remote = self._remote.pop(f"full:{model_id}", None)
            if remote is not None:
                remote.close()
            for server in self._remote.values():
                server.unload_lora(model_id)
            for entry in self._models.values():
                adapter = entry.adapters.get(model_id)
                if adapter is None:
                    continue
                entry.loras.pop(model_id, None)
                with entry.lock:
                    entry.adapters.pop(model_id, None)
                    if not adapter.batched:
                        with contextlib.suppress(
                            Exception
                        ):  # peft refuses to delete the last adapter: keep it
                            entry.lm.model.delete_adapter(adapter.name)

    def loaded(self) -> dict[str, list[str]]:
        return {key: sorted(e.adapters) for key, e in self._models.items()}

    # ---------------------------------------------------------------------------------------- generating
    def start(
        self,
        prep: Prepared,
        ticket: Ticket,
        prompts: list[list[int]],
        params: SamplingParams,
        n: int,
        put: Callable[[Any], None],
        cancel: threading.Event,
    ) -> Run:
        """Generate n choices per prompt, handing each piece of text to `put` as it is made, then DONE (or the
        error). The ticket is closed when the last choice ends, whether or not anyone reads the pieces."""
        stops = set(prep.stop_ids or [prep.tokenizer.eos_token_id])
        choices = [ChoiceText(prep.tokenizer, i, stops, params.stop) for i in range(len(prompts) * n)]
        run = Run(choices)
        if prep.remote is not None or not prep.batched:  # a thread of its own that hands on DONE or the error
            from tuneforge.serve.engine.serial import generate_serially

            work = self._generate_remotely if prep.remote is not None else generate_serially
            threading.Thread(
                target=_handed_over,
                args=(put, work, self, prep, ticket, prompts, params, n, run, put, cancel),
                daemon=True,
                name="generate",
            ).start()
            return run
        scheduler = prep.entry.scheduler
        need = max(len(p) for p in prompts) + params.max_new_tokens
        if need > scheduler.budget.total:  # it would wait forever
            raise APIError(
                400,
                f"This request needs {need} tokens of KV cache per choice; the server holds "
                f"{scheduler.budget.total} for this model (kv_cache_mb). Lower max_tokens or shorten the prompt.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        left = [len(choices)]
        errors: list[BaseException] = []
        lock = threading.Lock()

        def on_end(error: BaseException | None) -> None:
            with lock:
                if error is not None:
                    errors.append(error)
                left[0] -= 1
                last = left[0] == 0
            if last:
                ticket.close()
                put(errors[0] if errors else DONE)

        prep.entry.last_used = time.time()
        scheduler.submit(
            [
                Sequence.seeded(
                    params,
                    c.index,
                    scheduler.decoder.device,
                    prompt=prompts[c.index // n],
                    choice=c,
                    lora=prep.lora,
                    emit=put,
                    on_end=on_end,
                    cancelled=cancel.is_set,
                )
                for c in choices
            ]
        )
        return run

    @staticmethod
    def _generate_remotely(engine, prep, ticket, prompts, params, n, run, put, cancel) -> None:
        server = prep.remote
        with ticket, engine.counted("remote_running"), server.busy():
            server.generate(
                prep.remote_model, prompts, params, n, prep.stop_ids, run.choices, put, cancel, engine.metrics
            )


def _handed_over(put: Callable[[Any], None], work: Callable[..., None], *args: Any) -> None:
    """work(*args), then DONE to the request, or the error, which the request reports."""
    try:
        work(*args)
        put(DONE)
    except BaseException as e:
        put(e)


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
