"""The fine-tuning recipe: setup() → train() → save_artifact() → cleanup(), readable top to bottom.

Plain PyTorch with `accelerate` for device placement and mixed precision (so several GPUs need no rewrite),
`peft` or plain freezing through the method registry, and our own loss (train/objectives.py).

Exactness of resume: the batches of every step are a function of (seed, step), the RNG states are saved in
each checkpoint, and gradient accumulation normalises by the target tokens of the whole optimizer step — so a
run resumed from a checkpoint ends where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from tuneforge.config import RunConfig
from tuneforge.data.collate import epoch_batches, split_by_tokens
from tuneforge.data.pack import pack
from tuneforge.data.schema import Example
from tuneforge.data.tokenize import TokenizeReport, count_tokens_fn, label_set
from tuneforge.errors import DataError, MemoryBudgetError
from tuneforge.methods import registry
from tuneforge.models import memory
from tuneforge.models.load import LoadedModel, attention_for, cpu_has_fast_bf16, load_model, set_attention
from tuneforge.models.memory import Estimate
from tuneforge.ops.fused_ops import FusedOps
from tuneforge.ops.lm_loss import weighted_lm_loss
from tuneforge.progress import Steps, bar, console
from tuneforge.train import checkpoint as ckpt
from tuneforge.train import compile as compile_layers
from tuneforge.train.objectives import build_objective
from tuneforge.train.rundir import RunDir
from tuneforge.train.tracking import track_events

EventFn = Callable[[str, dict[str, Any]], None]

# oneDNN (PyTorch's CPU bf16 matmuls) caches a compiled primitive per matmul shape, 1024 by default. Training sees a
# new shape for nearly every sequence length, and the cache grew a SmolLM2 LoRA run's resident memory by 0.3 GB;
# 128 keeps the speed (bench/README.md). Set here, by the training recipes' module, so that it applies to training
# processes only and before oneDNN first runs (it reads the variable once); set it in the environment to override.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")

# glibc serves blocks of 32 MB and more (its dynamic ceiling) with a fresh mmap and unmaps them on free, and trims
# the heap's freed top beyond twice the threshold. A training step allocates and frees such blocks all the time
# (LM-head chunks, attention scores, activations), and a fresh block is page-faulted in, 4 KB at a time: a 50 MB
# copy took 8-11 ms in a training process when it faulted vs 1.5-2 ms into reused memory. Training on CPU keeps
# blocks up to 64 MB in the heap and the heap's top up to 128 MB (bench/README.md: about half the page faults,
# 287-303 -> 308-322 tok/s, peak +0.04-0.1 GiB). Process-wide, set once the training process knows it runs on CPU.
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 128 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_USER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}


def keep_freed_memory() -> bool:
    """Apply the malloc settings above (glibc only; left alone when the environment sets glibc.malloc tunables)."""
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or _USER_MALLOC_ENV & set(os.environ):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_val_loss: float | None
    best_step: int | None
    stopped_early: bool
    stopped_by_request: bool
    train_seconds: float
    tokens_seen: int
    data_report: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Accelerate's mixed_precision value: "bf16" where it pays (GPUs with bf16, CPUs with AVX512-BF16/AMX)."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_fast_bf16() else "no"
    return {"fp32": "no", "bf16-mixed": "bf16", "fp16-mixed": "fp16"}[precision]


def new_accelerator(precision: str, cpu: bool) -> Accelerator:
    """An Accelerator for this run. accelerate keeps its state per process, so a second run in the same
    process (the API, a worker, a sweep) with another precision would be refused; start from a clean state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=precision, cpu=cpu)


class FineTune(ckpt.Checkpointed):
    """One run. `should_stop` is polled every step (cancel/pause from the service); `on_event` receives
    "message", "metrics" and "checkpoint" events. The message announcing the start of training carries
    `total_steps`."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        resume: bool = False,
        overwrite: bool = False,
        on_event: EventFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        device: str | None = None,
    ):
        self.cfg = cfg = with_absolute_paths(cfg)
        self.run = RunDir(Path(cfg.run_dir))
        self.resume = resume
        self.overwrite = overwrite
        self.on_event = on_event or (lambda kind, payload: None)
        self.should_stop = should_stop or (lambda: False)
        self.device = device
        self.spec = registry.get(cfg.method.name)

    # ---------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg = self.cfg
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.has_progress = self.run.claim(cfg, self.resume, self.overwrite)
        seed_everything(cfg.seed)

        self.lm: LoadedModel = load_model(
            cfg.model.name,
            dtype=cfg.model.dtype,
            device=self.device,
            attn_implementation=cfg.model.attn_implementation,
            chat_template=cfg.model.chat_template,
            revision=cfg.model.revision,
            steps=Steps(f"Preparing {cfg.model.name}"),
            load_options=self.spec.load_options(cfg.method) if self.spec.load_options else None,
        )
        if self.lm.device.type == "cpu":
            keep_freed_memory()
        tok = self.lm.tokenizer
        self.splits, self.data_report = prepare_splits(cfg, tok, self.run)
        self.labels = label_set(self.splits["train"])
        # The objective (SFT, DPO, ORPO, SFT + distillation) says how examples become training items.
        self.objective = build_objective(cfg)
        self.train_seqs, rep = self.objective.tokenize(
            self.splits["train"], tok, cfg.data, self.labels, "train"
        )
        self.val_seqs, vrep = self.objective.tokenize(
            self.splits["validation"], tok, cfg.data, self.labels, "validation"
        )
        self._add_replay(tok)
        self.data_report["tokenize"] = {"train": rep.summary(), "validation": vrep.summary()}
        _append_rejects(self.run.data / "rejects.jsonl", rep.rejects + vrep.rejects)
        _report_tokenization(rep, vrep, cfg)
        if len(self.train_seqs) < cfg.data.min_examples:
            raise DataError(
                f"only {len(self.train_seqs)} training examples remain after tokenisation "
                f"(need {cfg.data.min_examples})",
                f"see {self.run.data / 'rejects.jsonl'} for why records were dropped",
            )
        (self.run.data / "data_report.json").write_text(json.dumps(self.data_report, indent=1, default=str))
        if cfg.train.packing:
            n_before = len(self.train_seqs)
            self.train_seqs = pack(self.train_seqs, cfg.data.max_length)
            console.print(
                f"Packed {n_before} train sequences into {len(self.train_seqs)} rows of <= {cfg.data.max_length}"
            )

        set_attention(
            self.lm.model, attention_for(cfg.model.attn_implementation, self.lm.device, training=True)
        )
        model = self.spec.prepare(self.lm.model, cfg.method)
        self.ewc = None
        if cfg.forgetting.ewc > 0:  # the Fisher of the base model, before any step (and before a resume)
            from tuneforge.train.forgetting import build_ewc

            self.ewc = build_ewc(cfg, model, tok, self.lm.device)
        if cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        device = self.lm.device
        precision = resolve_precision(cfg.train.precision, device)
        if precision == "bf16" and self.spec.artifact == "adapter":
            frozen_to_bf16(model)
        self.accelerator = new_accelerator(precision, cpu=device.type == "cpu")
        self.optimizer = build_optimizer(model, cfg)
        t = cfg.train
        self.batches_per_epoch = math.ceil(len(self.train_seqs) / t.batch_size)
        self.steps_per_epoch = max(1, math.ceil(self.batches_per_epoch / t.grad_accum))
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * self.steps_per_epoch))
        self.eval_every = t.eval_every or max(1, self.steps_per_epoch // 4)
        self.save_every = t.save_every or self.eval_every
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            model, self.optimizer, self.scheduler
        )
        self.state = ckpt.LoopState()
        self.compiled: compile_layers.CompiledLayers | None = None
        # The eager step's RMSNorm, SwiGLU, causal attention and LoRA projections (ops/fused_ops.py).
        self.fused_ops = FusedOps(self.accelerator.unwrap_model(self.model))
        self.compile_marker: compile_layers.CacheMarker | None = None
        use, why = compile_layers.resolve(cfg.train.compile, cfg.method.name, device)
        if use:
            self.compile_marker = compile_layers.CacheMarker(
                self.accelerator.unwrap_model(self.model), cfg.method.model_dump(), device
            )
            if cfg.train.compile is True:
                self._start_compiling()
            # auto: decided in train() after the first steps, from the time the rest of the run would take
        elif cfg.train.compile is not False:
            console.print(f"[dim]Not compiling: {why}[/]")
        if cfg.train.memory_check:
            self.check_memory()
        if self.has_progress:
            self._restore()
        trainable, total = registry.trainable_summary(self.model)
        msg = (
            f"Training {cfg.method.name} on {self.lm.name}: {trainable:,} of {total:,} parameters trainable "
            f"({100 * trainable / total:.2f}%), {len(self.train_seqs)} train / {len(self.val_seqs)} validation "
            f"sequences, {self.total_steps} steps, precision {self.accelerator.mixed_precision}"
        )
        console.print(msg)
        self.on_event("message", {"message": msg, "total_steps": self.total_steps})

    def _add_replay(self, tok: Any) -> None:
        """forgetting.replay: general examples mixed into the training stream (seeded, so resume sees the same)."""
        from tuneforge.train.forgetting import replay_examples

        general = replay_examples(self.cfg, len(self.train_seqs))
        if not general:
            return
        dcfg = self.cfg.data.model_copy(update={"truncation": "drop"})
        seqs, _ = self.objective.tokenize(general, tok, dcfg, (), "replay")
        self.train_seqs += seqs
        self.data_report["replay"] = {"general_sequences": len(seqs), "fraction": self.cfg.forgetting.replay}
        console.print(
            f"Replay: {len(seqs)} general sequences mixed in ({self.cfg.forgetting.replay:.0%} of the stream)"
        )

    # ------------------------------------------------------------------------------------------ memory
    def estimate(self, timing: bool = False) -> Estimate:
        """Predicted peak memory (and time per epoch when `timing`) of this run as set up.

        Timing runs a few real optimizer steps of different sizes and puts the weights, optimizer, scheduler and
        random state back afterwards, so the run itself is unchanged.
        """
        t = self.cfg.train
        steps = range(self.steps_per_epoch)
        shapes, step_tokens, targets = [], [], 0
        for step in steps:
            n = 0
            for mb in self.micro_batches(step):
                rows, length = self.rows_per_item * len(mb), max(len(self.train_seqs[i]) for i in mb)
                shapes.append((rows, length))
                targets = max(targets, sum(self.train_seqs[i].n_target for i in mb))
                n += rows * length
            step_tokens.append(n)
        model = self.accelerator.unwrap_model(self.model)
        conf = self.lm.model.config
        rng = ckpt.rng_state()  # the probe must not shift the run's random stream (dropout)
        try:
            with self.fused_ops.active():  # the probe keeps what an eager training step keeps
                est = memory.estimate(
                    model,
                    loss_fn=weighted_lm_loss,
                    autocast=self.accelerator.autocast,
                    device=self.lm.device,
                    vocab=conf.vocab_size,
                    hidden=conf.hidden_size,
                    layers=conf.num_hidden_layers,
                    micro_batch_shapes=shapes,
                    max_target_tokens=targets,
                    optimizer=t.optimizer,
                    gradient_checkpointing=t.gradient_checkpointing,
                )
            if timing:
                self._time_steps(est, step_tokens)
        finally:
            ckpt.set_rng_state(rng)
            self.optimizer.zero_grad(set_to_none=True)
        return est

    def _time_steps(self, est: Estimate, step_tokens: list[int]) -> None:
        import copy

        saved = (
            ckpt.trainable_state(self.accelerator.unwrap_model(self.model)),
            copy.deepcopy(self.optimizer.state_dict()),
            copy.deepcopy(self.scheduler.state_dict()),
        )
        order = sorted(range(len(step_tokens)), key=lambda s: step_tokens[s])
        picks = [order[int(q * (len(order) - 1))] for q in (0.5, 0.1, 0.5, 0.9, 0.3, 0.7)]
        self.model.train()
        # Warm-up, untimed: kernels and allocators; with train.compile, the compiled graph of every shape.
        for s in picks if self.compiled else picks[:1]:
            self.train_step(s)
        # At least five timed steps; cheap steps (small models) are timed for a second in all, since a
        # 30 ms step varies by a third from one to the next.
        samples: list[tuple[int, float]] = []
        while len(samples) < 5 or (sum(sec for _, sec in samples) < 1.0 and len(samples) < 40):
            s = picks[1 + len(samples) % (len(picks) - 1)]
            samples.append((step_tokens[s], self.train_step(s)["seconds"]))
        ckpt.load_trainable_state(self.accelerator.unwrap_model(self.model), saved[0])
        self.optimizer.load_state_dict(saved[1])
        self.scheduler.load_state_dict(saved[2])
        overhead, per_token = memory.fit_step_time(samples)
        train_s = sum(overhead + per_token * n for n in step_tokens)
        # Validation passes and checkpoint writes happen at their own pace: time one of each.
        evals = self.steps_per_epoch / self.eval_every if self.val_seqs else 0
        val_s = 0.0
        if self.val_seqs:
            t0 = time.time()
            self.validation_loss()
            val_s = time.time() - t0
        checkpoint_s, best_s = self._time_saves()
        # Checkpoints at their interval; the best weights (artifact + trainable state) at most at every evaluation.
        est.seconds_per_epoch = (
            train_s + evals * (val_s + best_s) + self.steps_per_epoch / self.save_every * checkpoint_s
        )
        est.tokens_per_second = sum(step_tokens) / max(train_s, 1e-9)

    def _time_saves(self) -> tuple[float, float]:
        """Seconds to write one checkpoint, and one copy of the best weights."""
        import tempfile

        model = self.accelerator.unwrap_model(self.model)
        with tempfile.TemporaryDirectory(prefix="tuneforge-save-") as tmp:
            times = []
            for _ in range(2):  # the first write pays one-off costs (imports, tokenizer serialisation caches)
                t0 = time.time()
                ckpt.save_checkpoint(
                    Path(tmp),
                    model,
                    self.optimizer,
                    self.scheduler,
                    self.state,
                    self.cfg.fingerprint(),
                    keep=1,
                )
                t1 = time.time()
                self.save_best(Path(tmp) / "best", Path(tmp) / "best-trainable.safetensors")
                times.append((t1 - t0, time.time() - t1))
        return times[-1]

    def check_memory(self) -> None:
        est = self.estimate()
        self.memory_estimate = est
        if not est.fits:
            raise MemoryBudgetError(
                f"this run needs about {memory.gib(est.peak_bytes)} at its peak but the machine has "
                f"{memory.gib(est.available_bytes + est.parts['in use now'])} for it",
                "try " + "; or ".join(est.suggestions) + " (or --set train.memory_check=false to try anyway)",
            )

    def _restore(self) -> None:
        root = self.run.checkpoints
        removed = ckpt.clean_partial(root)
        found = ckpt.complete_checkpoints(root, self.cfg.fingerprint())
        if removed:
            console.print(f"Removed {removed} incomplete checkpoint folder(s) left by an interrupted run")
        if not found:
            self.run.truncate_metrics(0)
            return
        last = found[-1]
        self.state = ckpt.load_checkpoint(last, self.model, self.optimizer, self.scheduler)
        self.run.truncate_metrics(self.state.step)
        msg = f"Resumed from {last.name} (step {self.state.step} of {self.total_steps})"
        console.print(msg)
        self.on_event("message", {"message": msg})

    # ---------------------------------------------------------------------------------------------- train
    def micro_batches(self, step: int) -> list[list[int]]:
        """The micro-batches (lists of example indices) of optimizer step `step` — a pure function."""
        t = self.cfg.train
        lengths = [self.rows_per_item * len(s) for s in self.train_seqs]  # a pair fills twice the budget
        out = []
        for k in range(step * t.grad_accum, (step + 1) * t.grad_accum):
            epoch, pos = divmod(k, self.batches_per_epoch)
            order = self._epoch_order(epoch, lengths)
            out.extend(split_by_tokens(order[pos], lengths, self.micro_budget))
        return out

    @property
    def rows_per_item(self) -> int:
        """Model rows per training item: a preference pair runs as two (chosen, rejected)."""
        return 2 if self.objective.pairs else 1

    @property
    def micro_budget(self) -> int | None:
        """Tokens per micro-batch; `auto` is 512 on CPU, where it lowers peak memory by ~2x on 512-token batches
        of 4 and runs faster too (matmuls that stay in cache), and whole batches on GPU."""
        mbt = self.cfg.train.micro_batch_tokens
        if mbt == "auto":
            return 512 if self.lm.device.type == "cpu" else None
        return mbt

    def _epoch_order(self, epoch: int, lengths: list[int]) -> list[list[int]]:
        cache = getattr(self, "_order_cache", None)
        if cache is None or cache[0] != epoch:
            t = self.cfg.train
            self._order_cache = (
                epoch,
                epoch_batches(lengths, t.batch_size, self.cfg.seed, epoch, t.group_by_length),
            )
        return self._order_cache[1]

    def train(self) -> TrainResult:
        cfg, st = self.cfg, self.state
        # TensorBoard / MLflow when `tracking.backends` asks for them (train/tracking.py).
        self.on_event, self.tracker = track_events(cfg, self.run.root, self.on_event)
        start_time = time.time()
        stopped_by_request = False
        timed: list[dict] = []  # this process's first steps, for train.compile: auto
        self.model.train()
        with bar("Training", self.total_steps, "loss", "speed") as progress:
            task = progress.add_task("Training", total=self.total_steps, completed=st.step, loss="", speed="")
            while st.step < self.total_steps:
                if self.should_stop():
                    stopped_by_request = True
                    self.save_checkpoint()
                    break
                self._method_step(st.step)
                row = self.train_step(st.step)
                if self.compile_marker is not None:
                    timed.append(row)
                    if self.compiled is not None:  # the first compiled step ran: the cache holds the graphs
                        self.compile_marker.set()
                        self.compile_marker = None
                    elif len(timed) == compile_layers.DECIDE_AFTER_STEPS:
                        self._decide_compile(timed)
                st.step += 1
                st.tokens_seen += row["tokens"]
                row = {"step": st.step, "epoch": round(st.step / self.steps_per_epoch, 4), **row}
                if st.step % cfg.train.log_every == 0 or st.step == self.total_steps:
                    self._log(row)
                progress.update(
                    task, advance=1, loss=f"loss {row['loss']:.4f}", speed=f"{row['tokens_per_s']:.0f} tok/s"
                )
                last = st.step == self.total_steps
                if self.val_seqs and (st.step % self.eval_every == 0 or last):
                    if self.validate_and_track():
                        st.stopped_early = True
                        self.save_checkpoint()
                        msg = (
                            f"Early stopping at step {st.step}: validation loss has not improved for "
                            f"{cfg.train.early_stopping_patience} evaluations (best {st.best_val_loss:.4f} "
                            f"at step {st.best_step})"
                        )
                        console.print(msg)
                        self.on_event("message", {"message": msg})
                        break
                if st.step % self.save_every == 0 or last:
                    self.save_checkpoint()
                if not console.is_terminal and (st.step % 10 == 0 or last):
                    console.print(
                        f"step {st.step}/{self.total_steps} loss {row['loss']:.4f} "
                        f"{row['tokens_per_s']:.0f} tok/s"
                    )
        st.elapsed_s += time.time() - start_time
        return TrainResult(
            run_dir=self.run.root,
            steps=st.step,
            best_val_loss=st.best_val_loss,
            best_step=st.best_step,
            stopped_early=st.stopped_early,
            stopped_by_request=stopped_by_request,
            train_seconds=st.elapsed_s,
            tokens_seen=st.tokens_seen,
            data_report=self.data_report,
        )

    def _start_compiling(self) -> None:
        self.compiled = compile_layers.CompiledLayers(self.accelerator.unwrap_model(self.model))

    def _decide_compile(self, timed: list[dict]) -> None:
        """train.compile: auto — compile when the rest of the run, timed from its first eager steps, gains more
        than compiling costs on this machine."""
        marker = self.compile_marker
        per_token = min(r["seconds"] / max(r["tokens"], 1) for r in timed)  # the first step also warms up
        tokens_per_epoch = self.rows_per_item * sum(len(s) for s in self.train_seqs)
        remaining_steps = self.total_steps - self.state.step - 1  # called before the step count moves on
        remaining_s = per_token * tokens_per_epoch / self.steps_per_epoch * remaining_steps
        use, why = compile_layers.pays(remaining_s, marker.warm, self.lm.device.type)
        msg = ("Compiling the decoder layers: " if use else "Not compiling: ") + why
        console.print(f"[dim]{msg}[/]")
        self.on_event("message", {"message": msg})
        if use:
            self._start_compiling()
        else:
            self.compile_marker = None

    def _method_step(self, step: int) -> None:
        """The method's schedule (gradual unfreezing) sets what trains at this step; a pure function of the step,
        so a resumed run trains the same parameters as an uninterrupted one."""
        if self.spec.on_step is None:
            return
        model = self.accelerator.unwrap_model(self.model)
        msg = self.spec.on_step(model, self.cfg.method, step, step / self.steps_per_epoch)
        if msg:
            console.print(msg)
            self.on_event("message", {"message": msg})

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step on the micro-batches of `step`: forward, backward, clip, update, schedule."""
        t0 = time.time()
        pad = self.lm.tokenizer.pad_token_id
        obj = self.objective
        batches = [obj.collate([self.train_seqs[i] for i in mb], pad) for mb in self.micro_batches(step)]
        # Normalise by the units (target tokens; pairs) of the whole optimizer step: accumulation = one big batch.
        norm = sum(obj.norm(b) for b in batches)
        loss_sum = correct = 0.0
        stats: dict[str, float] = {}
        real_tokens = 0
        with self.compiled.active() if self.compiled else self.fused_ops.active():
            for b in batches:
                b = {k: v.to(self.accelerator.device) for k, v in b.items()}
                with self.accelerator.autocast():
                    parts = obj.loss(self.model, b)
                self.accelerator.backward(parts.loss_sum / norm)
                loss_sum += float(parts.loss_sum.detach())
                correct += parts.correct
                for k, v in parts.stats.items():
                    stats[k] = stats.get(k, 0.0) + v / max(norm, 1e-9)
                real_tokens += int(b["attention_mask"].sum())
        if self.ewc is not None:  # EWC's penalty gradient, added layer by layer
            stats["ewc_penalty"] = self.ewc.backward(self.accelerator.backward)
        grad_norm = None
        if self.cfg.train.max_grad_norm:
            grad_norm = float(
                self.accelerator.clip_grad_norm_(self._trainable(), self.cfg.train.max_grad_norm)
            )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = time.time() - t0
        row = {
            "loss": loss_sum / max(norm, 1e-9),
            obj.accuracy: correct / max(norm, 1e-9),
            **stats,
            "lr": lr,
            "tokens_per_s": real_tokens / max(dt, 1e-9),
            "tokens": real_tokens,
            "seconds": dt,
        }
        if grad_norm is not None:
            row["grad_norm"] = grad_norm
        return row

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def validation_loss(self) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        pad = self.lm.tokenizer.pad_token_id
        order = sorted(range(len(self.val_seqs)), key=lambda i: len(self.val_seqs[i]))
        bs = self.cfg.train.batch_size * 2
        obj = self.objective
        loss = weight = correct = 0.0
        stats: dict[str, float] = {}
        for i in range(0, len(order), bs):
            b = obj.collate([self.val_seqs[j] for j in order[i : i + bs]], pad)
            b = {k: v.to(self.accelerator.device) for k, v in b.items()}
            with self.accelerator.autocast():
                parts = obj.validation(self.model, b)
            loss += float(parts.loss_sum)
            weight += parts.norm
            correct += parts.correct
            for k, v in parts.stats.items():
                stats[k] = stats.get(k, 0.0) + v
        if was_training:
            self.model.train()
        vl = loss / max(weight, 1e-9)
        out = {"val_loss": vl, f"val_{obj.accuracy}": correct / max(weight, 1e-9)}
        if not obj.pairs:  # a perplexity of a preference loss means nothing
            out["val_ppl"] = math.exp(min(vl, 50))
        return out | {f"val_{k}": v / max(weight, 1e-9) for k, v in stats.items()}

    def validate_and_track(self) -> bool:
        """Validate, keep the best weights, and say whether early stopping should end the run."""
        st = self.state
        res = self.validation_loss()
        self._log({"step": st.step, "epoch": round(st.step / self.steps_per_epoch, 4), **res})
        improved, stop = st.record_validation(res["val_loss"], self.cfg.train.early_stopping_patience)
        if improved:
            self.save_best(self.run.best, self._best_state)
        return stop

    def save_best(self, artifact: Path, state_file: Path) -> None:
        """The best weights so far: as an artifact, and as trainable state for reload_best."""
        self.save_artifact(artifact)
        state_file.parent.mkdir(parents=True, exist_ok=True)
        save_file(ckpt.trainable_state(self.accelerator.unwrap_model(self.model)), str(state_file))

    # ----------------------------------------------------------------------------------------- checkpoints
    @property
    def _best_state(self) -> Path:
        return self.run.checkpoints / "best-trainable.safetensors"

    def artifact_extras(self, folder: Path) -> None:
        self.lm.tokenizer.save_pretrained(folder)

    def reload_best(self) -> None:
        if self._best_state.is_file():
            ckpt.load_trainable_state(
                self.accelerator.unwrap_model(self.model), load_file(str(self._best_state))
            )

    def cleanup(self) -> None:
        if getattr(self, "tracker", None) is not None:
            self.tracker.close(status="KILLED" if not self.run.done.is_file() else "FINISHED")
        self.accelerator.free_memory()


# ------------------------------------------------------------------------------------------------- parts
def frozen_to_bf16(model: torch.nn.Module) -> int:
    """Keep every frozen parameter in bf16 when adapters train under bf16 autocast: half the weight memory, no
    fp32 -> bf16 copy of every weight at every step, and — with the embeddings and norms in bf16 too — a bf16
    residual stream. Each projection's input is then one bf16 tensor that its base layer and its adapter share
    (an fp32 stream is cast to bf16 once per consumer, and each adapter keeps its own copy for backward): 10%
    faster and 0.3 GB less at the peak on SmolLM2 (bench/README.md), same held-out loss. The trained parameters
    (adapters, and their optimizer state) stay fp32. Returns the number of parameters converted."""
    n = 0
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32:
            p.data = p.data.to(torch.bfloat16)
            n += p.numel()
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in model.modules():
        if isinstance(m, BaseTunerLayer):  # peft would cast the bf16 input to the adapter's fp32 first
            m.cast_input_dtype_enabled = False
    # The weights were memory-mapped from one safetensors file; the fp32 pages read for the conversion stay
    # resident while any tensor still points into that mapping. Copying the few that do (embeddings, norms)
    # releases it: about 0.3 GB less for SmolLM2 during the whole run.
    for t in [*model.parameters(), *model.buffers()]:
        if t.dtype != torch.bfloat16 and not t.requires_grad:
            t.data = t.data.clone()
    return n


def with_absolute_paths(cfg: RunConfig) -> RunConfig:
    """The run's config names local files absolutely, so the run folder works from any directory later."""
    cfg = cfg.model_copy(deep=True)
    if Path(cfg.model.name).exists():
        cfg.model.name = str(Path(cfg.model.name).resolve())
    for key in ("train", "validation", "test"):
        value = getattr(cfg.data, key)
        if value and Path(value).exists():
            setattr(cfg.data, key, str(Path(value).resolve()))
    for task in cfg.data.mix:
        if Path(task.train).exists():
            task.train = str(Path(task.train).resolve())
    for section, key in ((cfg.forgetting, "data"), (cfg.eval, "general")):
        value = getattr(section, key)
        if value and value != "bundled" and Path(value).exists():
            setattr(section, key, str(Path(value).resolve()))
    return cfg


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD) over the method's parameter groups (one group, or one per layer under layer-wise LR
    decay), each split into weight-decayed matrices and undecayed biases and norms."""
    t = cfg.train
    spec = registry.get(cfg.method.name)
    if spec.param_groups is not None:
        method_groups = spec.param_groups(model, cfg.method, t.learning_rate)
    else:
        method_groups = [
            {"params": [p for p in model.parameters() if p.requires_grad], "lr": t.learning_rate}
        ]
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for g in method_groups:
        decay, no_decay = [], []
        for p in g["params"]:
            n = names.get(id(p), "")
            (no_decay if p.ndim < 2 or "norm" in n.lower() or n.endswith(".bias") else decay).append(p)
        groups.append({"params": decay, "weight_decay": t.weight_decay, "lr": g["lr"]})
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": g["lr"]})
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise DataError("the method left no parameter to train", "check the method settings")
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.learning_rate, momentum=t.momentum)
    return torch.optim.AdamW(groups, lr=t.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, total_steps: int):
    from transformers import get_scheduler

    t = cfg.train
    warmup = t.warmup_steps if t.warmup_steps is not None else int(round(t.warmup_ratio * total_steps))
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[t.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def prepare_splits(
    cfg: RunConfig, tok: Any, run: RunDir, count: Callable[[Example], int] | None = None
) -> tuple[dict[str, list[Example]], dict[str, Any]]:
    """Read, clean, validate and split the data once; later calls (resume, eval) read the saved splits.
    `count`: token length of an example (default: as rendered through the chat template)."""
    from tuneforge.data.prepare import prepare_data, read_split, write_rejects, write_split

    marker = run.data / "splits.json"
    names = ("train", "validation", "test")
    if marker.is_file():
        report = (
            json.loads((run.data / "data_report.json").read_text())
            if (run.data / "data_report.json").is_file()
            else {}
        )
        return {n: read_split(run.data / f"{n}.jsonl") for n in names}, report
    run.data.mkdir(parents=True, exist_ok=True)
    count = count or count_tokens_fn(tok, cfg.data)
    prepared = prepare_data(cfg.data, cfg.seed, count)
    splits = {"train": prepared.train, "validation": prepared.validation, "test": prepared.test}
    for n in names:
        write_split(splits[n], run.data / f"{n}.jsonl")
    write_rejects(prepared.rejects, run.data / "rejects.jsonl")
    report = {
        "format": prepared.format,
        "stats": prepared.stats,
        "warnings": [str(p) for p in prepared.problems[:50]],
        "n_warnings": len(prepared.problems),
    }
    (run.data / "data_report.json").write_text(json.dumps(report, indent=1, default=str))
    marker.write_text(json.dumps({n: len(splits[n]) for n in names}))
    return splits, report


def _append_rejects(path: Path, rejects: list) -> None:
    if not rejects:
        return
    with open(path, "a") as f:
        for r in rejects:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False, default=str) + "\n")


def _report_tokenization(rep: TokenizeReport, vrep: TokenizeReport, cfg: RunConfig) -> None:
    """Counts the user must see before training starts: nothing is cut or dropped silently."""
    for name, r in (("train", rep), ("validation", vrep)):
        if r.examples_in == 0:
            continue
        parts = [
            f"{r.sequences_out} sequences from {r.examples_in} examples",
            f"{r.target_tokens:,} target tokens",
            f"longest {r.longest}",
        ]
        if r.truncated:
            parts.append(f"[yellow]{r.truncated} truncated to {cfg.data.max_length}[/]")
        if r.dropped_too_long:
            parts.append(f"[yellow]{r.dropped_too_long} dropped as longer than {cfg.data.max_length}[/]")
        if r.dropped_no_target:
            parts.append(f"[yellow]{r.dropped_no_target} dropped with nothing to train on[/]")
        if r.skipped_undesirable:
            parts.append(f"{r.skipped_undesirable} undesirable answers skipped")
        if r.chunked_texts:
            parts.append(f"{r.chunked_texts} long texts split into chunks")
        console.print(f"Tokenised {name}: " + ", ".join(parts))


def run_training(cfg: RunConfig, **options: Any) -> tuple[TrainResult, FineTune]:
    """setup → train → finish. Returns the result and the recipe (whose model is still loaded, for eval).

    options: resume, overwrite, on_event, should_stop, device — as FineTune takes them.
    """
    ft = FineTune(cfg, **options)
    ft.setup()
    try:
        result = ft.train()
        if not result.stopped_by_request:
            ft.finish()
    except BaseException:  # a crash or Ctrl-C: the tracked run says so instead of staying "running"
        if getattr(ft, "tracker", None) is not None:
            ft.tracker.close(status="FAILED")
        raise
    return result, ft
