"""The training loop every recipe uses: optimizer steps, validation, early stopping, checkpoints, exact resume,
the trained artifact, metrics, events and tracking — readable top to bottom.

A recipe (recipes/lm.py for language models, recipes/classify.py for classification heads) loads the model,
prepares the data and says how items become a loss (an Objective, train/objectives.py); the loop does the rest, the
same way for every recipe. Plain PyTorch with `accelerate` for device placement and mixed precision, so several
GPUs need no rewrite.

Exactness of resume: the batches of every step are a function of (seed, step), the RNG states are saved in each
checkpoint, and gradient accumulation normalises by the units (target tokens, pairs, texts) of the whole
optimizer step — so a run resumed from a checkpoint ends where an uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tuneforge.config import RunConfig, TrainConfig
from tuneforge.data.collate import epoch_batches, split_by_tokens
from tuneforge.errors import ConfigError
from tuneforge.methods import registry
from tuneforge.models.load import decoder_layers
from tuneforge.progress import bar, console
from tuneforge.rundir import RunDir
from tuneforge.train import checkpoint as ckpt
from tuneforge.train import distributed
from tuneforge.train.objectives import Objective
from tuneforge.train.optim import build_optimizer, build_scheduler
from tuneforge.train.runtime import new_accelerator, seed_everything
from tuneforge.train.tracking import track_events

EventFn = Callable[[str, dict[str, Any]], None]


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


@dataclass
class RunOptions:
    """How a run is started and watched; the same for every recipe. `should_stop` is polled every step (pause and
    cancel from the service); `on_event` receives "message", "metrics" and "checkpoint" events, and the message
    announcing the start of training carries `total_steps`."""

    resume: bool = False
    overwrite: bool = False
    on_event: EventFn | None = None
    should_stop: Callable[[], bool] | None = None
    device: str | None = None
    shared_run: str | None = None  # a data-parallel rank other than 0: rank 0's run folder, to resume from


@dataclass
class Hooks:
    """What a recipe adds to the loop; all optional."""

    # the kernels the step runs in (the fused eager ops, or the compiled layers); called at every step
    step_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    # sees each step's metrics row before the step count moves on (train.compile: auto decides there)
    after_step: Callable[[dict[str, Any]], None] | None = None
    # a regulariser whose gradient is added after the step's batches: .name, .backward(backward) -> its value (EWC)
    penalty: Any = None
    # the forgetting guard (train/forgetting.Guard): .check(model, autocast) -> {general_loss, general_ppl_rise}
    # at each validation; .limit, the rise above which (when it .acts) a validation cannot be the best
    guard: Any = None
    # files saved next to the trained weights (the tokenizer; a classifier's label names)
    artifact_extras: Callable[[Path], None] = lambda folder: None


@dataclass
class StepSums:
    """What the micro-batches of one optimizer step add up to."""

    loss_sum: float
    norm: float  # the step's units (target tokens; pairs; texts)
    correct: float
    stats: dict[str, float]  # the objective's extra terms, per unit
    real_tokens: int


def accumulate_gradients(
    obj: Objective,
    model: torch.nn.Module,
    batches: list[dict[str, torch.Tensor]],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    backward: Callable[[torch.Tensor], None],
    norm: float | None = None,
    fillers: tuple[int, dict[str, torch.Tensor]] | None = None,
) -> StepSums:
    """Forward and backward over one optimizer step's micro-batches, normalised by the units of the whole step:
    accumulation = one big batch. The training step and the learning-rate range test (train/auto.py) share it.
    `norm`: the step's units when these batches are one rank's share of it (data parallel). `fillers`: (how
    many, a batch) forwards and backwards that add nothing — a sharded rank with fewer micro-batches than the
    others still joins each of their collectives."""
    if norm is None:
        norm = sum(obj.norm(b) for b in batches)
    loss_sum = correct = 0.0
    stats: dict[str, float] = {}
    real_tokens = 0
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        with autocast():
            parts = distributed.run(model, obj.loss, b)
        backward(parts.loss_sum / norm)
        loss_sum += float(parts.loss_sum.detach())
        correct += parts.correct
        for k, v in parts.stats.items():
            stats[k] = stats.get(k, 0.0) + v / max(norm, 1e-9)
        real_tokens += int(b["attention_mask"].sum())
    count, filler = fillers or (0, {})
    for _ in range(count):
        with autocast():
            parts = distributed.run(model, obj.loss, {k: v.to(device) for k, v in filler.items()})
        backward(parts.loss_sum * 0.0)
    return StepSums(loss_sum, norm, correct, stats, real_tokens)


def step_counts(t: TrainConfig, n_items: int) -> tuple[int, int, int]:
    """(batches per epoch, optimizer steps per epoch, total steps) of `n_items` training items; `t.epochs` must
    be a number by now (train/auto.py resolves `auto` from these counts)."""
    batches_per_epoch = math.ceil(n_items / t.batch_size)
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / t.grad_accum))
    return batches_per_epoch, steps_per_epoch, t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))


def start_run(cfg: RunConfig, run: RunDir, options: RunOptions) -> bool:
    """What every recipe does first: the CPU threads, the run folder claimed (True: earlier progress of this same
    run to resume), and the seed."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    has_progress = run.claim(cfg, options.resume, options.overwrite)
    seed_everything(cfg.seed)
    return has_progress


class Loop:
    """One run's training, from its prepared model and items to the finished artifact."""

    def __init__(
        self,
        cfg: RunConfig,
        run: RunDir,
        model: torch.nn.Module,
        objective: Objective,
        train_items: Sequence[Any],
        val_items: Sequence[Any],
        *,
        pad_id: int,
        precision: str,
        device: torch.device,
        options: RunOptions,
        hooks: Hooks | None = None,
    ):
        self.cfg, self.run, self.objective = cfg, run, objective
        self.train_items, self.val_items, self.pad_id, self.device = train_items, val_items, pad_id, device
        self.spec = registry.get(cfg.method.name)
        self.hooks = hooks or Hooks()
        self.on_event: EventFn = options.on_event or (lambda kind, payload: None)
        self.should_stop = options.should_stop or (lambda: False)
        self.tracker = None
        self.accelerator = new_accelerator(precision, cpu=device.type == "cpu")
        self.ranks = distributed.current()
        # FSDP: the model is sharded before the optimizer is built (it must hold the shards).
        self.sharded = self.ranks.active and cfg.train.distributed.strategy == "fsdp"
        if self.sharded:
            self._check_shardable()
            model.to(self.accelerator.device)
            distributed.same_weights([p for p in model.parameters() if p.requires_grad])
            distributed.shard(model, decoder_layers(model))
        optimizer = build_optimizer(model, cfg)
        t = cfg.train
        self.batches_per_epoch, self.steps_per_epoch, self.total_steps = step_counts(t, len(train_items))
        # 4 validations per epoch, at most 20 per run: many epochs of a small set need no validation every step
        self.eval_every = t.eval_every or max(1, self.steps_per_epoch // 4, math.ceil(self.total_steps / 20))
        self.save_every = t.save_every or self.eval_every
        scheduler = build_scheduler(optimizer, cfg, self.total_steps)
        if self.ranks.active:
            # Data parallel is ours (train/distributed.py): under torchrun accelerate would wrap the model in DDP
            # (a second all-reduce) and step the scheduler once per rank each step, so only the optimizer is its.
            self.model, self.scheduler = model.to(self.accelerator.device), scheduler
            self.optimizer = self.accelerator.prepare_optimizer(optimizer)
        else:
            self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.state = ckpt.LoopState()
        self.shared = RunDir(options.shared_run) if options.shared_run else run
        if not self.sharded:  # freshly initialised trainable weights start as rank 0's on every rank
            distributed.same_weights(self._trainable())
        # the shortest item: what a sharded rank's filler micro-batches are made of
        self._filler = min(range(len(train_items)), key=lambda i: len(train_items[i]), default=0)

    def _check_shardable(self) -> None:
        """What FSDP cannot do here: say so before any rank starts training."""
        why = None
        if self.spec.on_step is not None:
            why = f"{self.cfg.method.name} changes which parameters train during the run"
        elif self.hooks.penalty is not None:
            why = "the EWC penalty reads whole parameters at every step"
        elif self.objective.name == "grpo":
            why = "grpo samples answers on each rank with generate(), which is not built for sharded weights here"
        if why:
            raise ConfigError(
                f"train.distributed.strategy fsdp cannot shard this run: {why}",
                "use strategy ddp, or another method / forgetting setting",
            )

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def announce(self, msg: str) -> None:
        """The message that opens training: on the console and, with the step count, to the event receiver."""
        console.print(msg)
        self.on_event("message", {"message": msg, "total_steps": self.total_steps})

    # --------------------------------------------------------------------------------------------- batches
    def micro_batches(self, step: int, ranks: distributed.Ranks | None = None) -> list[list[int]]:
        """The micro-batches (lists of item indices) of optimizer step `step` — a pure function — for this rank,
        or for rank `ranks.rank` of `ranks.world` (what the estimate asks)."""
        t = self.cfg.train
        ranks = ranks or self.ranks
        lengths = [self.rows_per_item * len(s) for s in self.train_items]  # a pair fills twice the budget
        out = []
        for k in range(step * t.grad_accum, (step + 1) * t.grad_accum):
            epoch, pos = divmod(k, self.batches_per_epoch)
            batch = self._epoch_order(epoch, lengths)[pos]
            # this rank's share of the batch (the batch itself is the same on every rank)
            if ranks.active:
                batch = distributed.share(batch, ranks)
            if batch:
                out.extend(split_by_tokens(batch, lengths, self.micro_budget))
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
            return 512 if self.device.type == "cpu" else None
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

    # ----------------------------------------------------------------------------------------------- train
    def train(self) -> TrainResult:
        cfg, st = self.cfg, self.state
        # TensorBoard / MLflow when `tracking.backends` asks for them (train/tracking.py).
        self.on_event, self.tracker = track_events(cfg, self.run.root, self.on_event)
        start_time, stopped_by_request = time.time(), False
        self.model.train()
        with bar("Training", self.total_steps, "loss", "speed") as progress:
            task = progress.add_task("Training", total=self.total_steps, completed=st.step, loss="", speed="")
            while st.step < self.total_steps:
                if distributed.any_rank(self.should_stop()):
                    stopped_by_request = True
                    self.save_checkpoint()
                    break
                self._method_step(st.step)
                row = self.train_step(st.step)
                if self.hooks.after_step is not None:
                    self.hooks.after_step(row)
                st.step += 1
                st.tokens_seen += row["tokens"]
                row = {"step": st.step, "epoch": round(st.step / self.steps_per_epoch, 4), **row}
                if st.step % cfg.train.log_every == 0 or st.step == self.total_steps:
                    self._log(row)
                progress.update(
                    task, advance=1, loss=f"loss {row['loss']:.4f}", speed=f"{row['tokens_per_s']:.0f} tok/s"
                )
                last = st.step == self.total_steps
                if self.val_items and (st.step % self.eval_every == 0 or last) and self.validate_and_track():
                    self._stop_early()
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
        )

    def _stop_early(self) -> None:
        st = self.state
        st.stopped_early = True
        self.save_checkpoint()
        best = (
            f"best {st.best_val_loss:.4f} at step {st.best_step}"
            if st.best_step is not None
            else "no validation within the forgetting guard's limit"
        )
        msg = (
            f"Early stopping at step {st.step}: validation loss has not improved for "
            f"{self.cfg.train.early_stopping_patience} evaluations ({best})"
        )
        console.print(msg)
        self.on_event("message", {"message": msg})

    def _method_step(self, step: int) -> None:
        """The method's schedule (gradual unfreezing) sets what trains at this step; a pure function of the step,
        so a resumed run trains the same parameters as an uninterrupted one."""
        if self.spec.on_step is None:
            return
        msg = self.spec.on_step(self.unwrapped, self.cfg.method, step, step / self.steps_per_epoch)
        if msg:
            console.print(msg)
            self.on_event("message", {"message": msg})

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step on the micro-batches of `step`: forward, backward, clip, update, schedule."""
        t0 = time.time()
        obj = self.objective
        obj.begin_step(step)
        batches = [
            obj.collate([self.train_items[i] for i in mb], self.pad_id) for mb in self.micro_batches(step)
        ]
        norm = fillers = None
        if self.ranks.active:  # every rank normalises by the whole step's units
            norm = distributed.sum_all([sum(obj.norm(b) for b in batches)])[0]
        backward = self.accelerator.backward
        if self.sharded:
            missing = distributed.most(len(batches)) - len(batches)
            fillers = (missing, self._filler_batch() if missing else {})
            world = self.ranks.world

            def backward(loss: torch.Tensor) -> None:  # FSDP averages over ranks: N x each rank's share sums
                self.accelerator.backward(loss * world)

        with self.hooks.step_context():
            sums = accumulate_gradients(
                obj,
                self.model,
                batches,
                self.accelerator.device,
                self.accelerator.autocast,
                backward,
                norm,
                fillers,
            )
        if self.ranks.active:
            if not self.sharded:  # (FSDP's backward has reduce-scattered them already)
                distributed.sum_gradients(self._trainable())
            sums = self._summed(sums)
        norm, stats = sums.norm, sums.stats
        penalty = self.hooks.penalty
        if penalty is not None:  # a regulariser's gradient (EWC), added layer by layer
            stats[penalty.name] = penalty.backward(self.accelerator.backward)
        grad_norm = None
        if self.cfg.train.max_grad_norm:
            grad_norm = distributed.scalar(
                self.accelerator.clip_grad_norm_(self._trainable(), self.cfg.train.max_grad_norm)
            )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = time.time() - t0
        row = {
            "loss": sums.loss_sum / max(norm, 1e-9),
            obj.accuracy: sums.correct / max(norm, 1e-9),
            **stats,
            "lr": lr,
            "tokens_per_s": sums.real_tokens / max(dt, 1e-9),
            "tokens": sums.real_tokens,
            "seconds": dt,
            **obj.step_stats(),
        }
        if grad_norm is not None:
            row["grad_norm"] = grad_norm
        return row

    def _filler_batch(self) -> dict[str, torch.Tensor]:
        return self.objective.collate([self.train_items[self._filler]], self.pad_id)

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _summed(self, sums: StepSums) -> StepSums:
        """A step's figures summed over the ranks (each saw its share of the step)."""
        (loss_sum, correct, tokens), stats = distributed.sum_figures(
            [sums.loss_sum, sums.correct, float(sums.real_tokens)], sums.stats
        )
        return StepSums(loss_sum, sums.norm, correct, stats, int(tokens))

    # ------------------------------------------------------------------------------------------ validation
    @torch.no_grad()
    def validation_loss(self) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        order = sorted(range(len(self.val_items)), key=lambda i: len(self.val_items[i]))
        if self.ranks.active:  # each rank its share; the sums are added up below
            order = distributed.share(order, self.ranks)
        bs = self.cfg.train.batch_size * 2
        obj = self.objective
        loss = weight = correct = 0.0
        stats: dict[str, float] = {}
        starts = list(range(0, len(order), bs))
        if self.sharded:  # every rank runs as many forwards as the busiest (None: a filler, not counted)
            starts += [None] * (distributed.most(len(starts)) - len(starts))
        for i in starts:
            picked = [self.val_items[j] for j in order[i : i + bs]] if i is not None else None
            b = obj.collate(picked or [self.val_items[0]], self.pad_id)
            b = {k: v.to(self.accelerator.device) for k, v in b.items()}
            with self.accelerator.autocast():
                parts = distributed.run(self.model, obj.validation, b)
            if picked is None:
                continue
            loss += float(parts.loss_sum)
            weight += parts.norm
            correct += parts.correct
            for k, v in parts.stats.items():
                stats[k] = stats.get(k, 0.0) + v
        if was_training:
            self.model.train()
        if self.ranks.active:
            (loss, weight, correct), stats = distributed.sum_figures([loss, weight, correct], stats)
        vl = loss / max(weight, 1e-9)
        out = {"val_loss": vl, f"val_{obj.accuracy}": correct / max(weight, 1e-9)}
        if obj.perplexity:
            out["val_ppl"] = math.exp(min(vl, 50))
        return out | {f"val_{k}": v / max(weight, 1e-9) for k, v in stats.items()}

    def validate_and_track(self) -> bool:
        """Validate, keep the best weights, and say whether early stopping should end the run."""
        st = self.state
        res = self.validation_loss()
        guard = self.hooks.guard
        if guard is not None:
            res |= distributed.run(self.model, guard.check, self.accelerator.autocast)
        self._log({"step": st.step, "epoch": round(st.step / self.steps_per_epoch, 4), **res})
        over = guard is not None and res["general_ppl_rise"] > guard.limit
        admissible = not (over and guard.acts)
        if over:
            msg = (
                f"Forgetting guard: general perplexity {res['general_ppl_rise']:+.0%} at step {st.step} (limit "
                f"{guard.limit:.0%}); "
                + (
                    "this checkpoint is not kept as the best"
                    if guard.acts
                    else "watching only (forgetting.guard: true acts; forgetting.replay mixes general data in)"
                )
            )
            console.print(f"[yellow]{msg}[/]")
            self.on_event("message", {"message": msg})
        improved, stop = st.record_validation(
            res["val_loss"], self.cfg.train.early_stopping_patience, admissible
        )
        if improved:
            self.save_best(self.run.best, self.run.best_state)
        return stop

    # ----------------------------------------------------------------------------------------- checkpoints
    def restore(self) -> None:
        """Continue from the last complete checkpoint of this same run (half-written ones are removed)."""
        root = self.shared.checkpoints  # data parallel: every rank resumes from rank 0's checkpoints
        removed = ckpt.clean_partial(root) if self.ranks.main else 0
        distributed.barrier()  # rank 0 has removed half-written ones before the others look
        found = ckpt.complete_checkpoints(root, self.cfg.fingerprint())
        if removed:
            console.print(f"Removed {removed} incomplete checkpoint folder(s) left by an interrupted run")
        if not found:
            self.run.truncate_metrics(0)
            return
        last = found[-1]
        into = None
        if self.sharded:  # each rank reads its share of the shards

            def into(folder: Path) -> None:
                distributed.load_sharded(self.model, self._raw_optimizer, folder)

        self.state = ckpt.load_checkpoint(last, self.model, self.optimizer, self.scheduler, into)
        self.run.truncate_metrics(self.state.step)
        msg = f"Resumed from {last.name} (step {self.state.step} of {self.total_steps})"
        console.print(msg)
        self.on_event("message", {"message": msg})

    @property
    def _raw_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)  # (accelerate's wrapper)

    def save_checkpoint(self) -> None:
        staged = None
        if self.sharded:  # every rank writes its shards into rank 0's staging folder; rank 0 the rest
            main = self.ranks.main
            where = str(ckpt.staging_dir(self.run.checkpoints, self.state.step)) if main else None
            staged = Path(distributed.from_main(where))
            distributed.save_sharded(self.model, self._raw_optimizer, staged / ckpt.SHARDED)
            distributed.barrier()
        if not self.ranks.main:  # every rank's state is the same (or its shards are written): rank 0 keeps it
            return
        path = ckpt.save_checkpoint(
            self.run.checkpoints,
            self.unwrapped,
            self.optimizer,
            self.scheduler,
            self.state,
            self.cfg.fingerprint(),
            self.cfg.train.keep_checkpoints,
            staged=staged,
        )
        self.on_event("checkpoint", {"step": self.state.step, "path": str(path)})

    def save_artifact(self, out: Path) -> None:
        """The trained result in its standard form (PEFT adapter, or a full model folder) + its extras, written
        under a temporary name and renamed. Rank 0 writes (every rank calls it: a sharded model is gathered)."""
        with self._whole_weights() as _:
            if self.ranks.main:
                self._write_artifact(out)

    def _write_artifact(self, out: Path) -> None:
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.spec.save(self.unwrapped, tmp)
        self.hooks.artifact_extras(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)

    @contextlib.contextmanager
    def _whole_weights(self):
        """Inside: the model's state_dict() holds whole weights on rank 0 (a sharded model's are gathered; an
        adapter needs only the trainable ones). Yields the trainable state (None when not sharded)."""
        if not self.sharded:
            yield None
            return
        adapter = hasattr(self.unwrapped, "peft_config")
        state = distributed.full_state(self.model, trainable_only=adapter)
        with distributed.state_dict_as(self.unwrapped, state):
            yield {n: state[n] for n, p in self.model.named_parameters() if p.requires_grad and n in state}

    def save_best(self, artifact: Path, state_file: Path) -> None:
        """The best weights so far: as an artifact, and as trainable state for reload_best. Every rank calls it;
        rank 0 writes."""
        with self._whole_weights() as trainable:
            if not self.ranks.main:
                return
            self._write_artifact(artifact)
            state_file.parent.mkdir(parents=True, exist_ok=True)
            save_file(trainable or ckpt.trainable_state(self.unwrapped), str(state_file))

    def reload_best(self) -> None:
        """Put the best validated weights back into the model (evaluation follows and must see them)."""
        if self.run.best_state.is_file():
            ckpt.load_trainable_state(self.unwrapped, load_file(str(self.run.best_state)))

    def finish(self) -> Path:
        """Write the final artifact — the best validated weights if there was validation, else the last ones — and
        train_done.json with the run's counters."""
        target = self.run.artifact(self.spec.artifact)
        st = self.state
        use_best = distributed.from_main(st.best_step is not None and self.run.best.is_dir())
        if self.sharded:
            if not use_best:
                self.save_artifact(target)
            self._raw_optimizer.state.clear()  # training is over (its state is in the last checkpoint)
            # rank 0 evaluates alone next: every rank gathers the whole model and keeps it so
            distributed.gather_for_good(self.model)
        if not self.ranks.main:  # rank 0 writes the artifact
            return target
        if use_best:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(self.run.best, target)
            if st.best_step != st.step:
                self.reload_best()
        elif not self.sharded:
            self.save_artifact(target)
        info = {
            "steps": st.step,
            "best_step": st.best_step,
            "best_val_loss": st.best_val_loss,
            "stopped_early": st.stopped_early,
            "tokens_seen": st.tokens_seen,
            "train_seconds": round(st.elapsed_s, 1),
            "artifact": target.name,
        }
        self.run.done.write_text(json.dumps(info, indent=1))
        if self.tracker is not None:
            self.tracker.close(info)
        return target

    def cleanup(self) -> None:
        if self.tracker is not None:
            self.tracker.close(status="KILLED" if not self.run.done.is_file() else "FINISHED")
        self.accelerator.free_memory()

    def _log(self, row: dict[str, Any]) -> None:
        if not self.ranks.main:
            return
        with open(self.run.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.on_event("metrics", row)
