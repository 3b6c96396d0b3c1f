"""The language-model recipe: every LM method (LoRA and the PEFT family, full, freeze ...) with SFT, DPO or
ORPO, and the forgetting mitigations. setup() loads the model, prepares and tokenises the data and hands the
prepared model to the training loop (train/loop.py), which does the rest.

    rec = FineTune(cfg); rec.setup(); rec.loop.train(); rec.loop.finish(); rec.loop.cleanup()

recipes/run.py runs it like that; `estimate()` predicts the run's peak memory and time from the set-up run.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tuneforge.config import RunConfig, with_absolute_paths
from tuneforge.data.pack import pack
from tuneforge.data.tokenize import TokenizeReport, label_set
from tuneforge.errors import ConfigError, DataError, MemoryBudgetError
from tuneforge.methods import registry
from tuneforge.models import memory
from tuneforge.models.adapters import record_base
from tuneforge.models.load import (
    LoadedModel,
    attention_for,
    autocast_inference,
    decoder_layers,
    set_attention,
)
from tuneforge.models.memory import Estimate
from tuneforge.models.registry import hub_id_for
from tuneforge.ops.fused_ops import FusedOps
from tuneforge.ops.lm_loss import weighted_lm_loss
from tuneforge.progress import Steps, console
from tuneforge.recipes.runs import load_any
from tuneforge.recipes.splits import append_rejects, prepare_splits, token_counter, write_data_report
from tuneforge.rundir import RunDir
from tuneforge.train import auto, distributed
from tuneforge.train import checkpoint as ckpt
from tuneforge.train import compile as compile_layers
from tuneforge.train.loop import Hooks, Loop, RunOptions, start_run
from tuneforge.train.objectives import build_objective
from tuneforge.train.runtime import (
    adapter_input_casts,
    frozen_to_bf16,
    keep_freed_memory,
    resolve_precision,
    seed_everything,
)


class FineTune:
    """One language-model run. Options as RunOptions takes them (resume, overwrite, on_event, should_stop,
    device)."""

    def __init__(self, cfg: RunConfig, **options: Any):
        self.cfg = with_absolute_paths(cfg)
        self.run = RunDir(self.cfg.run_dir)
        self.options = RunOptions(**options)
        self.spec = registry.get(self.cfg.method.name)
        self.compiled: compile_layers.CompiledLayers | None = None
        self.compile_marker: compile_layers.CacheMarker | None = None
        self._timed: list[dict] = []  # this process's first steps, for train.compile: auto

    # ---------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg = self.cfg
        # Data parallel: whether to resume is rank 0's answer (the others' folders are scratch ones).
        has_progress = distributed.from_main(start_run(cfg, self.run, self.options))
        self.lm: LoadedModel = load_any(
            cfg.model.name,
            dtype=cfg.model.dtype,
            device=self.options.device,
            attn_implementation=cfg.model.attn_implementation,
            chat_template=cfg.model.chat_template,
            revision=cfg.model.revision,
            steps=Steps(f"Preparing {cfg.model.name}"),
            load_options=self.spec.load_options(cfg.method) if self.spec.load_options else None,
        )
        if self.lm.device.type == "cpu":
            keep_freed_memory()
        self._prepare_data()
        model, precision, penalty = self._prepare_model()
        cfg = self.cfg = self._resolve_auto(model, precision, has_progress)
        # Data parallel: every rank trains with what rank 0 resolved ("auto" rate, epochs ...).
        if distributed.current().active:
            cfg = self.cfg = distributed.from_main(cfg).model_copy(update={"run_dir": cfg.run_dir})
        guard = self._guard(model, precision) if cfg.forgetting.guard else None
        self.loop = Loop(
            cfg,
            self.run,
            model,
            self.objective,
            self.train_seqs,
            self.val_seqs,
            pad_id=self.lm.tokenizer.pad_token_id,
            precision=precision,
            device=self.lm.device,
            options=self.options,
            hooks=Hooks(
                step_context=self._step_kernels,
                after_step=self._after_step,
                penalty=penalty,
                guard=guard,
                artifact_extras=self._artifact_extras,
            ),
        )
        # The eager step's RMSNorm, SwiGLU, causal attention and LoRA projections (ops/fused_ops.py).
        self.fused_ops = FusedOps(self.loop.unwrapped)
        self._plan_compile()
        # (a sharded model's probe would run collectives rank by rank: `tuneforge estimate --nproc` covers it)
        if cfg.train.memory_check and not self.loop.sharded:
            self.check_memory()
        if has_progress:
            self.loop.restore()
        ranks = distributed.current()
        if ranks.active:
            self.loop.announce(
                distributed.describe(
                    ranks, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.distributed.strategy
                )
            )
        trainable, total = registry.trainable_summary(self.loop.model)
        self.loop.announce(
            f"Training {cfg.method.name} on {self.lm.name}: {trainable:,} of {total:,} parameters trainable "
            f"({100 * trainable / total:.2f}%), {len(self.train_seqs)} train / {len(self.val_seqs)} validation "
            f"sequences, {self.loop.total_steps} steps, precision {self.loop.accelerator.mixed_precision}"
        )

    def _prepare_data(self) -> None:
        """Splits, then training items as the objective makes them (SFT sequences, DPO pairs), replay, packing."""
        cfg, tok = self.cfg, self.lm.tokenizer
        self.splits, self.data_report = prepare_splits(cfg, self.run, token_counter(cfg, tok))
        labels = label_set(self.splits["train"])
        self.objective = build_objective(cfg)
        self.train_seqs, rep = self.objective.tokenize(self.splits["train"], tok, cfg.data, labels, "train")
        self.val_seqs, vrep = self.objective.tokenize(
            self.splits["validation"], tok, cfg.data, labels, "validation"
        )
        self._add_replay(tok)
        self.data_report["tokenize"] = {"train": rep.summary(), "validation": vrep.summary()}
        append_rejects(self.run, rep.rejects + vrep.rejects)
        _report_tokenization(rep, vrep, cfg)
        if len(self.train_seqs) < cfg.data.min_examples:
            raise DataError(
                f"only {len(self.train_seqs)} training examples remain after tokenisation "
                f"(need {cfg.data.min_examples})",
                f"see {self.run.rejects} for why records were dropped",
            )
        write_data_report(self.run, self.data_report)
        if cfg.train.packing:
            n_before = len(self.train_seqs)
            self.train_seqs = pack(self.train_seqs, cfg.data.max_length)
            console.print(
                f"Packed {n_before} train sequences into {len(self.train_seqs)} rows of <= {cfg.data.max_length}"
            )

    def _resolve_auto(self, model: torch.nn.Module, precision: str, has_progress: bool) -> RunConfig:
        """The run's `auto` settings decided (train/auto.py) — a resumed run reuses its earlier decisions."""
        facts = auto.RunFacts(
            n_items=len(self.train_seqs),
            width=getattr(getattr(model, "config", None), "hidden_size", None),
            has_validation=bool(self.val_seqs),
            instruct=self.lm.template_origin == "model",
            # fp16 needs a gradient scaler that only the loop has
            range_test=None if precision == "fp16" else lambda: self._range_test(model, precision),
        )
        return auto.resolve_and_record(self.cfg, self.run, facts, has_progress, self.options.on_event)

    def _range_test(self, model: torch.nn.Module, precision: str) -> auto.RangeTest:
        cfg, device = self.cfg, self.lm.device
        console.print(f"Learning-rate range test: {auto.RANGE_TEST_STEPS} steps on a throw-away copy ...")
        t0 = time.time()
        test = auto.range_test(
            model,
            self.objective,
            self.train_seqs,
            pad_id=self.lm.tokenizer.pad_token_id,
            batch_size=cfg.train.batch_size * cfg.train.grad_accum,
            device=device,
            autocast=self._autocast(precision),
            micro_budget=512 if device.type == "cpu" else None,
            seed=cfg.seed,
        )
        seed_everything(cfg.seed)  # training then draws the same dropout masks as with a set rate
        console.print(f"[dim]Range test took {time.time() - t0:.0f} s[/]")
        return test

    def _autocast(self, precision: str):
        """The loop's autocast for work done before the loop exists (the range test, the guard's base loss)."""
        device_type = self.lm.device.type
        return lambda: torch.autocast(device_type, torch.bfloat16, enabled=precision == "bf16")

    def _guard(self, model: torch.nn.Module, precision: str):
        from tuneforge.train.forgetting import build_guard

        guard = build_guard(self.cfg, self.lm.tokenizer, self.lm.tokenizer.pad_token_id)
        base = guard.measure_base(model, self._autocast(precision))
        console.print(
            f"[dim]Forgetting guard: {len(guard.seqs)} general examples, base loss {base:.4f}, limit "
            f"+{guard.limit:.0%} perplexity[/]"
        )
        return guard

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

    def _prepare_model(self) -> tuple[torch.nn.Module, str, Any]:
        """The method applied (adapters, freezing), the EWC penalty, checkpointing and the weights' dtypes."""
        cfg = self.cfg
        set_attention(
            self.lm.model, attention_for(cfg.model.attn_implementation, self.lm.device, training=True)
        )
        if cfg.model.adapter:  # the next version of a tuned adapter, not a fresh one
            from tuneforge.methods.peft_common import continue_adapter

            model = continue_adapter(self.lm.model, cfg.model.adapter)
        else:
            model = self.spec.prepare(self.lm.model, cfg.method)
        ewc = None
        if cfg.forgetting.ewc > 0:  # the Fisher of the base model, before any step (and before a resume)
            from tuneforge.train.forgetting import build_ewc

            ewc = build_ewc(cfg, model, self.lm.tokenizer, self.lm.device)
        if cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        precision = resolve_precision(cfg.train.precision, self.lm.device)
        if precision == "bf16" and self.spec.artifact == "adapter":
            frozen_to_bf16(model)
        return model, precision, ewc

    # -------------------------------------------------------------------------------------------- compile
    def _plan_compile(self) -> None:
        cfg, device = self.cfg, self.lm.device
        if self.loop.sharded:
            if cfg.train.compile is True:
                raise ConfigError(
                    "train.compile is true but the run is sharded (fsdp): the compiled layers are not built for "
                    "sharded weights",
                    "set train.compile: auto or false, or use strategy ddp",
                )
            return
        use, why = compile_layers.resolve(cfg.train.compile, cfg.method.name, device)
        if use:
            self.compile_marker = compile_layers.CacheMarker(
                self.loop.unwrapped, cfg.method.model_dump(), device
            )
            if cfg.train.compile is True:
                self._start_compiling()
            # auto: decided after the first steps, from the time the rest of the run would take
        elif cfg.train.compile is not False:
            console.print(f"[dim]Not compiling: {why}[/]")

    def _artifact_extras(self, folder: Path) -> None:
        self.lm.tokenizer.save_pretrained(folder)
        record_base(folder, self.cfg.model.name, hub_id_for(self.cfg.model.name))

    def _step_kernels(self):
        return self.compiled.active() if self.compiled else self.fused_ops.active()

    def _start_compiling(self) -> None:
        self.compiled = compile_layers.CompiledLayers(self.loop.unwrapped)

    def _after_step(self, row: dict[str, Any]) -> None:
        if self.compile_marker is None:
            return
        self._timed.append(row)
        if self.compiled is not None:  # the first compiled step ran: the cache holds the graphs
            self.compile_marker.set()
            self.compile_marker = None
        elif len(self._timed) == compile_layers.DECIDE_AFTER_STEPS:
            self._decide_compile(self._timed)

    def _decide_compile(self, timed: list[dict]) -> None:
        """train.compile: auto — compile when the rest of the run, timed from its first eager steps, gains more
        than compiling costs on this machine."""
        loop = self.loop
        per_token = min(r["seconds"] / max(r["tokens"], 1) for r in timed)  # the first step also warms up
        tokens_per_epoch = loop.rows_per_item * sum(len(s) for s in self.train_seqs)
        remaining_steps = loop.total_steps - loop.state.step - 1  # called before the step count moves on
        remaining_s = per_token * tokens_per_epoch / loop.steps_per_epoch * remaining_steps
        use, why = compile_layers.pays(remaining_s, self.compile_marker.warm, self.lm.device.type)
        msg = ("Compiling the decoder layers: " if use else "Not compiling: ") + why
        console.print(f"[dim]{msg}[/]")
        loop.on_event("message", {"message": msg})
        if use:
            self._start_compiling()
        else:
            self.compile_marker = None

    # ------------------------------------------------------------------------------------------ after training
    def trained_model(self) -> LoadedModel:
        """The model this run holds in memory, set up for generation (evaluation right after training)."""
        model = self.loop.unwrapped
        set_attention(
            model, attention_for(self.cfg.model.attn_implementation, self.lm.device, training=False)
        )
        if not autocast_inference(
            self.lm.device
        ):  # bf16 frozen weights meet fp32 adapters (train/runtime.py)
            adapter_input_casts(model, True)
        return LoadedModel(
            model=model,
            tokenizer=self.lm.tokenizer,
            name=self.lm.name,
            source=self.lm.source,
            base_path=self.lm.base_path,
            template_origin=self.lm.template_origin,
            stop_token_ids=self.lm.stop_token_ids,
            run_dir=self.run.root,
            method=self.cfg.method.name,
        )

    def report(self, training: dict[str, Any], show: bool) -> dict[str, Any]:
        """Base (zero- and few-shot) and tuned model on the test split: report.json, report.html and, with `show`,
        the table on the console."""
        from tuneforge.eval.compare import compare
        from tuneforge.eval.report import print_report, write_report

        cfg = self.cfg
        tuned = self.trained_model()
        # An adapter run answers as its base with the adapters off: one copy of the weights in memory.
        shared = getattr(tuned.model, "peft_config", None) is not None
        base = tuned
        if not shared:
            base = load_any(
                cfg.model.name,
                dtype=cfg.model.dtype,
                device=self.options.device,
                chat_template=cfg.model.chat_template,
                revision=cfg.model.revision,
            )
        report = compare(
            base,
            tuned,
            self.splits["test"],
            train=self.splits["train"],
            validation=self.splits["validation"],
            data_cfg=cfg.data,
            eval_cfg=cfg.eval,
            seed=cfg.seed,
            shared_weights=shared,
        )
        report["training"] = {"method": cfg.method.name, **training}
        report["data"] = self.data_report
        write_report(report, self.run.root)
        if show:
            print_report(report, console)
            console.print(
                f"Run folder: [bold]{self.run.root}[/] (adapter/model, metrics.jsonl, loss_curve.png, report.html)"
            )
        return report

    def score(self, examples: list, labels: list[str], title: str) -> dict[str, Any]:
        """The tuned model's answers to `examples`, scored with the task metrics (eval/compare.py)."""
        from tuneforge.eval.compare import Variant, run_variant

        return run_variant(
            Variant("tuned", title, self.trained_model()), examples, self.cfg.data, self.cfg.eval, labels
        )

    # ------------------------------------------------------------------------------------------ memory
    def check_memory(self) -> None:
        est = self.estimate()
        self.memory_estimate = est
        if not est.fits:
            raise MemoryBudgetError(
                f"this run needs about {memory.gib(est.peak_bytes)} at its peak but the machine has "
                f"{memory.gib(est.available_bytes + est.parts['in use now'])} for it",
                "try " + "; or ".join(est.suggestions) + " (or --set train.memory_check=false to try anyway)",
            )

    def estimate(self, timing: bool = False, ranks: int = 1) -> Estimate:
        """Predicted peak memory (and time per epoch when `timing`) of this run as set up; with `ranks` > 1, of
        one data-parallel rank: a whole model, and rank 0's share of each step (the largest).

        Timing runs a few real optimizer steps of different sizes and puts the weights, optimizer, scheduler and
        random state back afterwards, so the run itself is unchanged.
        """
        loop, t = self.loop, self.cfg.train
        shapes, step_tokens, targets = [], [], 0
        share = distributed.Ranks(0, ranks) if ranks > 1 else None
        for step in range(loop.steps_per_epoch):
            n = 0
            for mb in loop.micro_batches(step, share):
                rows, length = loop.rows_per_item * len(mb), max(len(self.train_seqs[i]) for i in mb)
                shapes.append((rows, length))
                targets = max(targets, sum(self.train_seqs[i].n_target for i in mb))
                n += rows * length
            step_tokens.append(n)
        conf = self.lm.model.config
        rng = ckpt.rng_state()  # the probe must not shift the run's random stream (dropout)
        try:
            with self.fused_ops.active():  # the probe keeps what an eager training step keeps
                est = memory.estimate(
                    loop.unwrapped,
                    loss_fn=weighted_lm_loss,
                    autocast=loop.accelerator.autocast,
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
            loop.optimizer.zero_grad(set_to_none=True)
        return est

    def allreduce_bytes(self, ranks: int) -> int:
        """What a ddp rank sends and receives per optimizer step: a ring all-reduce moves 2 (N-1)/N of the fp32
        gradient buffer."""
        trainable = sum(p.numel() for p in self.loop.model.parameters() if p.requires_grad)
        return int(8 * trainable * (ranks - 1) / ranks)

    def sharded_estimate(self, est: Estimate, ranks: int) -> tuple[Estimate, int]:
        """`est` (a ddp rank's) as an fsdp rank's, with its bytes exchanged per step (models/memory.sharded)."""
        share = distributed.Ranks(0, ranks)
        most = max(len(self.loop.micro_batches(s, share)) for s in range(self.loop.steps_per_epoch))
        return memory.sharded(est, self.loop.unwrapped, decoder_layers(self.loop.unwrapped), ranks, most)

    def _time_steps(self, est: Estimate, step_tokens: list[int]) -> None:
        loop = self.loop
        saved = (
            ckpt.trainable_state(loop.unwrapped),
            copy.deepcopy(loop.optimizer.state_dict()),
            copy.deepcopy(loop.scheduler.state_dict()),
        )
        order = sorted(range(len(step_tokens)), key=lambda s: step_tokens[s])
        picks = [order[int(q * (len(order) - 1))] for q in (0.5, 0.1, 0.5, 0.9, 0.3, 0.7)]
        loop.model.train()
        # Warm-up, untimed: kernels and allocators; with train.compile, the compiled graph of every shape.
        for s in picks if self.compiled else picks[:1]:
            loop.train_step(s)
        # At least five timed steps; cheap steps (small models) are timed for a second in all, since a
        # 30 ms step varies by a third from one to the next.
        samples: list[tuple[int, float]] = []
        while len(samples) < 5 or (sum(sec for _, sec in samples) < 1.0 and len(samples) < 40):
            s = picks[1 + len(samples) % (len(picks) - 1)]
            samples.append((step_tokens[s], loop.train_step(s)["seconds"]))
        ckpt.load_trainable_state(loop.unwrapped, saved[0])
        loop.optimizer.load_state_dict(saved[1])
        loop.scheduler.load_state_dict(saved[2])
        overhead, per_token = memory.fit_step_time(samples)
        train_s = sum(overhead + per_token * n for n in step_tokens)
        # Validation passes and checkpoint writes happen at their own pace: time one of each.
        evals = loop.steps_per_epoch / loop.eval_every if self.val_seqs else 0
        val_s = 0.0
        if self.val_seqs:
            t0 = time.time()
            loop.validation_loss()
            val_s = time.time() - t0
        checkpoint_s, best_s = self._time_saves()
        # Checkpoints at their interval; the best weights (artifact + trainable state) at most at every evaluation.
        est.seconds_per_epoch = (
            train_s + evals * (val_s + best_s) + loop.steps_per_epoch / loop.save_every * checkpoint_s
        )
        est.tokens_per_second = sum(step_tokens) / max(train_s, 1e-9)

    def _time_saves(self) -> tuple[float, float]:
        """Seconds to write one checkpoint, and one copy of the best weights."""
        loop = self.loop
        with tempfile.TemporaryDirectory(prefix="tuneforge-save-") as tmp:
            times = []
            for _ in range(2):  # the first write pays one-off costs (imports, tokenizer serialisation caches)
                t0 = time.time()
                ckpt.save_checkpoint(
                    Path(tmp),
                    loop.unwrapped,
                    loop.optimizer,
                    loop.scheduler,
                    loop.state,
                    self.cfg.fingerprint(),
                    keep=1,
                )
                t1 = time.time()
                loop.save_best(Path(tmp) / "best", Path(tmp) / "best-trainable.safetensors")
                times.append((t1 - t0, time.time() - t1))
        return times[-1]


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
