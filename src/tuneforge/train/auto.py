"""What the `auto` training settings resolve to: learning rate, length of training, early stopping and the
forgetting guard — chosen per run from what is known before training, each with the reason, stored under
`resolved` in the run's config.yaml (a resumed run reuses them instead of deciding again).

Learning rate. The field's reference rates are for 7B-class models (hidden size 4096) at batch 8: 2e-4 for LoRA,
2e-5 for full fine-tuning (each method's `MethodSpec.reference_lr`). With Adam the right rate for the hidden
weights falls roughly as 1 / width, so the reference is scaled by 4096 / hidden (at most 8x, at least 0.25x), and by
sqrt(batch / 8) for the batch (at most 2x either way). Where it costs at most 5% of the run, a learning-rate range
test (Smith 2015; fastai's lr_find) refines that prior: a few dozen steps at exponentially rising rates on a
throw-away copy of the trainable weights, the rate taken a decade below the smoothed loss's minimum, and kept
within 3x of the prior (a range test on a few dozen batches is noisy; the prior is not).

Length. Small sets need more passes: a run sees at least 1,000 examples (at most 10 epochs), 3 epochs otherwise,
and at most 30,000 examples (less than one epoch for very large sets); early stopping on the validation loss and
the best checkpoint do the rest.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tuneforge.config import RunConfig, dump_config
from tuneforge.data.collate import split_by_tokens
from tuneforge.methods import registry
from tuneforge.progress import console
from tuneforge.rundir import RunDir
from tuneforge.train.loop import accumulate_gradients, step_counts

REFERENCE_WIDTH = 4096  # hidden size of the 7B-class models the field's reference rates were found on
REFERENCE_BATCH = 8
MIN_EXAMPLES_SEEN = 1_000
MAX_EXAMPLES_SEEN = 30_000
DEFAULT_EPOCHS = 3
MAX_AUTO_EPOCHS = 10
DEFAULT_PATIENCE = 3
RANGE_TEST_STEPS = 30
RANGE_TEST_MAX_COST = 0.05  # of the run's training work
RANGE_LOW, RANGE_HIGH = 1e-6, 1e-1
GRPO_LR_DIVISOR = 10


def _trim(x: float) -> float:
    return float(f"{x:.3g}")


# ---------------------------------------------------------------------------------------------- epochs
def auto_epochs(n_items: int) -> tuple[float, str]:
    """Epochs for `n_items` training items: 3, raised so that a small set is seen 1,000 times in all (at most 10
    epochs), lowered so that a large one is seen at most 30,000 times."""
    n = max(n_items, 1)
    epochs: float = DEFAULT_EPOCHS
    why = f"{DEFAULT_EPOCHS} epochs over {n_items} examples"
    if n * epochs < MIN_EXAMPLES_SEEN:
        epochs = min(MAX_AUTO_EPOCHS, math.ceil(MIN_EXAMPLES_SEEN / n))
        why = (
            f"{epochs:g} epochs: {n_items} examples are few, so they are seen {MIN_EXAMPLES_SEEN:,} times in all "
            f"(at most {MAX_AUTO_EPOCHS} epochs); early stopping ends the run sooner if validation loss stops falling"
        )
    elif n * epochs > MAX_EXAMPLES_SEEN:
        epochs = _trim(MAX_EXAMPLES_SEEN / n)
        why = f"{epochs:g} epochs: {n_items:,} examples are many, so at most {MAX_EXAMPLES_SEEN:,} are seen"
    return epochs, why


# ----------------------------------------------------------------------------------------- learning rate
def lr_prior(cfg: RunConfig, width: int | None) -> tuple[float, str]:
    """The learning rate known before training: the method's reference rate, scaled for width and batch."""
    spec = registry.get(cfg.method.name)
    ref = spec.reference_lr
    if spec.recipe == "classify" and getattr(cfg.method, "adapter", "none") != "none":
        ref = registry.get("lora").reference_lr  # a head trained through adapters
    scales = width and spec.lr_scales_with_width
    w = min(8.0, max(0.25, REFERENCE_WIDTH / width)) if scales else 1.0
    batch = cfg.train.batch_size * cfg.train.grad_accum
    b = min(2.0, max(0.5, math.sqrt(batch / REFERENCE_BATCH)))
    lr = _trim(ref * w * b)
    why = (
        f"{cfg.method.name} reference {ref:g} (7B-class model, batch {REFERENCE_BATCH})"
        + (f" x {w:.2g} for hidden size {width}" if scales else "")
        + f" x {b:.2g} for batch {batch}"
    )
    return lr, why


@dataclass
class RangeTest:
    """The learning-rate range test's curve and pick."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # smoothed (bias-corrected EMA)
    pick: float | None = None
    why: str = ""

    def falling(self) -> tuple[float, float] | None:
        """The rates over which the smoothed loss falls: from the first below the start to the minimum."""
        if len(self.losses) < 3:
            return None
        k_min = min(range(len(self.losses)), key=self.losses.__getitem__)
        start = next((k for k in range(k_min + 1) if self.losses[k] < self.losses[0] * 0.99), k_min)
        return self.lrs[start], self.lrs[k_min]


def range_test(
    model: torch.nn.Module,
    objective: Any,
    items: Sequence[Any],
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    micro_budget: int | None = None,
    steps: int = RANGE_TEST_STEPS,
    seed: int = 0,
    low: float = RANGE_LOW,
    high: float = RANGE_HIGH,
) -> RangeTest:
    """Train `steps` steps at rates rising exponentially from `low` to `high` (stopping once the loss has
    diverged), then put the trainable weights back exactly as they were. The pick is the rate a decade below the
    smoothed loss's minimum: still on the falling part of the curve, where training is fast and stable."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    was_training = model.training
    opt = torch.optim.AdamW(params, lr=low, betas=(0.9, 0.999), eps=1e-8)
    rng = random.Random(seed + 101)
    lengths = [(2 if objective.pairs else 1) * len(s) for s in items]
    out = RangeTest()
    ema, best = 0.0, math.inf
    model.train()
    try:
        for k in range(steps):
            lr = low * (high / low) ** (k / max(steps - 1, 1))
            for g in opt.param_groups:
                g["lr"] = lr
            batch = rng.sample(range(len(items)), min(batch_size, len(items)))
            micro = split_by_tokens(batch, lengths, micro_budget)
            collated = [objective.collate([items[i] for i in mb], pad_id) for mb in micro]
            sums = accumulate_gradients(objective, model, collated, device, autocast, torch.Tensor.backward)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss = sums.loss_sum / max(sums.norm, 1e-9)
            if not math.isfinite(loss):
                break
            ema = 0.7 * ema + 0.3 * loss
            smooth = ema / (1 - 0.7 ** (k + 1))
            out.lrs.append(_trim(lr))
            out.losses.append(round(smooth, 4))
            best = min(best, smooth)
            if smooth > 4 * best and k > 3:  # diverged: higher rates tell nothing more
                break
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        model.train(was_training)
    span = out.falling()
    if span is None or span[0] >= span[1]:
        out.why = "the loss did not fall over the tested rates"
        return out
    lr_min = span[1]
    out.pick = _trim(max(span[0], lr_min / 10))
    out.why = (
        f"loss fell from {span[0]:.2g} to {lr_min:.2g} over {len(out.lrs)} test steps; "
        f"picked {out.pick:g}, a decade below the minimum"
    )
    return out


def range_test_cost(steps_of_run: int, grad_accum: int) -> float:
    """The range test's work as a fraction of the run's (both in batches of the run's batch size)."""
    return RANGE_TEST_STEPS / max(steps_of_run * grad_accum, 1)


# ------------------------------------------------------------------------------------------------ resolve
@dataclass
class RunFacts:
    """What the resolution needs to know about a set-up run."""

    n_items: int  # training items (sequences, pairs, texts)
    width: int | None  # the model's hidden size
    has_validation: bool
    instruct: bool  # the base ships its own chat template: an instruction-tuned model
    range_test: Callable[[], RangeTest] | None = None  # None: this recipe cannot run one


def resolve(cfg: RunConfig, facts: RunFacts, stored: dict[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """The config with every `auto` training setting replaced by its value, and {key: {value, why, ...}} for
    each. `stored` (a resumed run's earlier resolution) is reused as it is."""
    eff = cfg.model_copy(deep=True)
    out: dict[str, Any] = {}
    t = eff.train

    def take(key: str, decide: Callable[[], dict[str, Any]]) -> Any:
        out[key] = stored.get(key) or decide()
        return out[key]["value"]

    if t.epochs == "auto":
        epochs, why = auto_epochs(facts.n_items)
        t.epochs = take("train.epochs", lambda: {"value": epochs, "why": why})
    if t.early_stopping_patience == "auto":
        t.early_stopping_patience = take(
            "train.early_stopping_patience",
            lambda: {
                "value": DEFAULT_PATIENCE if facts.has_validation else None,
                "why": f"stop after {DEFAULT_PATIENCE} validations without improvement"
                if facts.has_validation
                else "no validation split, so no early stopping",
            },
        )
    f = eff.forgetting
    if f.guard == "auto":
        f.guard = take("forgetting.guard", lambda: _decide_guard(eff, facts))
    if t.learning_rate == "auto":
        steps = step_counts(t, facts.n_items)[2]  # the loop's own count, with the epochs just decided
        t.learning_rate = take("train.learning_rate", lambda: _decide_lr(eff, facts, steps))
    return eff, out


def _decide_guard(cfg: RunConfig, facts: RunFacts) -> dict[str, Any]:
    if registry.get(cfg.method.name).recipe != "lm":
        return {"value": False, "why": "off: not a language-model run"}
    if not facts.instruct:
        return {"value": False, "why": "off: the base is not instruction-tuned (it ships no chat template)"}
    if not facts.has_validation:
        return {"value": False, "why": "off: no validation split to watch the general loss at"}
    limit = cfg.forgetting.max_general_rise
    return {
        "value": "watch",
        "why": f"watch (instruction-tuned base): the general loss is measured at each validation and a rise past "
        f"{limit:.0%} perplexity is reported; set forgetting.guard: true to keep such checkpoints from being the "
        "best (its cost in task gain is not measured yet: bench/README.md)",
    }


def _decide_lr(cfg: RunConfig, facts: RunFacts, steps: int) -> dict[str, Any]:
    prior, why = lr_prior(cfg, facts.width)
    use = cfg.train.lr_range_test
    if cfg.objective.name == "grpo":
        # A policy-gradient step is far noisier than a supervised one, and its loss starts at zero by
        # construction, so there is no falling curve for a range test to read.
        prior = _trim(prior / GRPO_LR_DIVISOR)
        why += f" / {GRPO_LR_DIVISOR} for grpo (no range test: its loss is not a curve to read)"
        return {"value": prior, "why": why, "prior": prior}
    cost = range_test_cost(steps, cfg.train.grad_accum)
    if use == "auto":
        use = facts.range_test is not None and cost <= RANGE_TEST_MAX_COST
        if not use and facts.range_test is not None:
            why += (
                f"; range test skipped: {RANGE_TEST_STEPS} test steps would cost {cost:.0%} of this {steps}-step "
                f"run (it runs when that is at most {RANGE_TEST_MAX_COST:.0%})"
            )
    if not use or facts.range_test is None:
        return {"value": prior, "why": why, "prior": prior}
    test = facts.range_test()
    entry: dict[str, Any] = {"prior": prior, "range_test": {"lrs": test.lrs, "losses": test.losses}}
    if test.pick is None:
        return {**entry, "value": prior, "why": f"{why}; range test: {test.why}, so the prior is kept"}
    value = _trim(min(3 * prior, max(prior / 3, test.pick)))
    clamp = "" if value == test.pick else f", kept within 3x of the prior {prior:g}"
    return {
        **entry,
        "value": value,
        "why": f"range test ({cost:.0%} of the run): {test.why}{clamp}; prior: {why}",
    }


def resolve_and_record(
    cfg: RunConfig,
    run: RunDir,
    facts: RunFacts,
    has_progress: bool,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> RunConfig:
    """Resolve a set-up run's `auto` settings (reusing a resumed run's), print each with its reason, store them
    under `resolved` in the run's config.yaml, and send them as one message event (the service shows them as the
    job's hyperparameters). Returns the config the run trains with."""
    stored = run.read_resolved() if has_progress else {}
    eff, resolved = resolve(cfg, facts, stored)
    if not resolved:
        return eff
    run.config.write_text(dump_config(cfg.model_copy(update={"resolved": resolved})))
    eff.resolved = resolved
    lines = [f"{key} = {entry['value']} (auto): {entry['why']}" for key, entry in resolved.items()]
    for line in lines:
        console.print(f"[dim]{line}[/]")
    if on_event is not None:
        on_event("message", {"message": "; ".join(lines), "resolved": resolved})
    return eff
