"""Catastrophic forgetting: the general data, and three mitigations.

Forgetting is measured in every report (eval/compare.py) as the change of loss on a general held-out set between
the base and the tuned model. What reduces it, each at a cost in task gain that the README's table measures:

- replay (`forgetting.replay: f`): a fraction f of the training stream is general data (data-level, any method).
- distillation (`forgetting.distill: w`): loss = CE(answers) + w * T^2 * KL(base || model) over every real token
  of the batch (prompt tokens included: that is where general behaviour lives, while the answer tokens are free
  to learn the task). The base is the same weights with the adapters switched off — no second copy in memory.
- EWC (`forgetting.ewc: lambda`, Kirkpatrick et al. 2017): penalty lambda * sum F * (theta - theta_0)^2 with F the
  diagonal empirical Fisher of the base model on general data (per-example gradients squared, normalised to mean
  1). For LoRA the parameters that drift are the base weights' effective values W + BA, so the anchor is a zero
  delta and the penalty is sum F_W * (BA * scale)^2, F_W being the Fisher of the frozen base weight W; it is
  formed and back-propagated one layer at a time, so no full-size delta is kept. Other methods anchor their
  trainable parameters at their initial values, with those parameters' own Fisher.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.data.general import general_examples
from tuneforge.data.schema import Example
from tuneforge.errors import DataError
from tuneforge.models.adapters import adapters_off
from tuneforge.ops.lm_loss import backbone_and_head, weighted_lm_loss
from tuneforge.train.objectives import Objective, StepLoss


def replay_examples(cfg: Any, n_task: int) -> list[Example]:
    """General examples making up `forgetting.replay` of the training stream (seeded; cycles when short)."""
    f = cfg.forgetting.replay
    if f <= 0 or n_task == 0:
        return []
    pool = general_examples(cfg.forgetting.data, "train")
    random.Random(cfg.seed + 17).shuffle(pool)
    want = round(f / (1 - f) * n_task)
    out = [pool[i % len(pool)] for i in range(want)]
    for ex in out:
        ex.meta = {**ex.meta, "task": "general (replay)"}
    return out


# ---------------------------------------------------------------------------------------------- distillation
class Distill(Objective):
    """SFT plus a KL term towards the base model (adapters off) on every real token of the batch."""

    name = "sft+distill"

    def __init__(self, weight: float, temperature: float = 1.0):
        self.weight = weight
        self.t = temperature

    def validation(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepLoss:
        return Objective.loss(self, model, batch)  # validation loss stays comparable with plain SFT runs

    def _logits(self, model: nn.Module, batch: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        ids, pos = batch["input_ids"], batch.get("position_ids")
        decoder, head, _ = backbone_and_head(model)
        if decoder is not None and isinstance(head, nn.Linear):
            hidden = decoder(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
            return head(hidden[:, :-1][rows]).float()
        out = model(input_ids=ids, position_ids=pos, use_cache=False)
        return out.logits[:, -ids.shape[1] :][:, :-1][rows].float()

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepLoss:
        real = batch["attention_mask"][:, 1:] > 0
        w = batch["weights"][:, 1:][real]
        targets = batch["input_ids"][:, 1:][real]
        logits = self._logits(model, batch, real)
        with torch.no_grad(), adapters_off(model):
            ref = self._logits(model, batch, real)
        sel = w > 0
        ce = F.cross_entropy(logits[sel], targets[sel], reduction="none")
        ce_sum = (ce * w[sel]).sum()
        logp = F.log_softmax(logits / self.t, -1)
        ref_logp = F.log_softmax(ref / self.t, -1)
        kl_sum = (ref_logp.exp() * (ref_logp - logp)).sum() * self.t**2
        # Normalised by the answer tokens like SFT: the KL over all tokens is scaled to the same unit.
        kl_scaled = kl_sum * (float(w.sum()) / max(int(real.sum()), 1))
        with torch.no_grad():
            correct = float(((logits[sel].argmax(-1) == targets[sel]).float() * w[sel]).sum())
        return StepLoss(
            ce_sum + self.weight * kl_scaled,
            float(w.sum()),
            correct,
            {"ce": float(ce_sum.detach()), "kl": float(kl_scaled.detach())},
        )


# ------------------------------------------------------------------------------------------------------- EWC
class EWC:
    """lambda * sum F * drift^2 over (drift function, Fisher) terms; backward() adds its gradient layer by layer."""

    name = "ewc_penalty"  # how the loop logs its value

    def __init__(self, lam: float, terms: list[tuple[Callable[[], torch.Tensor], torch.Tensor]]):
        self.lam = lam
        self.terms = terms

    def backward(self, backward: Callable[[torch.Tensor], None] | None = None) -> float:
        total = 0.0
        for drift, fisher in self.terms:
            pen = self.lam * (fisher.float() * drift().float().square()).sum()
            if pen.requires_grad:
                (backward or torch.Tensor.backward)(pen)
            total += float(pen.detach())
        return total


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer") and getattr(m, "lora_A", None)
    ]


def _fitting_general(cfg: Any, tok: Any, seed: int, n: int, what: str) -> list:
    """n general examples that fit data.max_length, tokenised, from the `forgetting.data` pool shuffled with
    `seed`: one that is too long is skipped for the next (taking n and dropping the long ones left a short
    max_length with few examples, or none, depending on the run's seed)."""
    from tuneforge.data.tokenize import tokenize_examples

    pool = general_examples(cfg.forgetting.data, "train")
    random.Random(seed).shuffle(pool)
    dcfg = cfg.data.model_copy(update={"truncation": "drop", "train_on": "assistant"})
    seqs: list = []
    for i in range(0, len(pool), max(n, 1)):
        more, _ = tokenize_examples(pool[i : i + n], tok, dcfg, (), what)
        seqs += more[: n - len(seqs)]
        if len(seqs) >= n:
            break
    return seqs


def build_ewc(cfg: Any, model: nn.Module, tok: Any, device: torch.device) -> EWC:
    """Diagonal empirical Fisher of the base model on `forgetting.fisher_examples` general examples."""
    from tuneforge.data.collate import collate

    seqs = _fitting_general(cfg, tok, cfg.seed + 29, cfg.forgetting.fisher_examples, "fisher")
    if not seqs:
        raise DataError("no general example fits data.max_length for the EWC Fisher", "raise data.max_length")
    lora = _lora_layers(model)
    if lora:
        params = [m.base_layer.weight for m in lora]
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    was = [p.requires_grad for p in params]
    grads = {id(p): torch.zeros_like(p, dtype=torch.float32) for p in params}
    for p in params:
        p.requires_grad_(True)
    model.eval()
    try:
        with adapters_off(model):
            for s in seqs:  # per-example gradients: the empirical Fisher is a mean of squared gradients
                b = {k: v.to(device) for k, v in collate([s], tok.pad_token_id).items()}
                parts = weighted_lm_loss(model, b)
                grad = torch.autograd.grad(
                    parts.loss_sum / max(parts.weight_sum, 1e-9), params, allow_unused=True
                )
                for p, g in zip(params, grad, strict=True):
                    if g is not None:
                        grads[id(p)] += g.float().square()
    finally:
        for p, w in zip(params, was, strict=True):
            p.requires_grad_(w)
        model.train()
    mean = torch.stack([g.mean() for g in grads.values()]).mean().clamp(min=1e-30)
    fishers = [(grads[id(p)] / mean).to(torch.bfloat16) for p in params]
    if lora:
        terms = [
            (lambda m=m: m.get_delta_weight(m.active_adapters[0]), f)
            for m, f in zip(lora, fishers, strict=True)
        ]
    else:
        terms = []
        for p, f in zip(params, fishers, strict=True):
            anchor = p.detach().clone()
            terms.append((lambda p=p, a=anchor: p - a, f))
    return EWC(cfg.forgetting.ewc, terms)


# ----------------------------------------------------------------------------------------------- the guard
class Guard:
    """The forgetting guard (`forgetting.guard`): the loss on a few general examples at each validation, as the
    relative rise of their perplexity over the base model's. When it `acts`, the loop keeps as the best checkpoint
    only validations within `limit`, so early stopping ends a run whose general loss stays above it."""

    def __init__(self, seqs: list, pad_id: int, limit: float, batch_size: int, acts: bool = True):
        self.seqs, self.pad_id, self.limit, self.batch_size = seqs, pad_id, limit, batch_size
        self.acts = acts  # False ("watch"): measure and warn only
        self.base_loss: float | None = None

    @torch.no_grad()
    def loss(self, model: nn.Module, autocast: Callable[[], Any]) -> float:
        from tuneforge.data.collate import collate

        was = model.training
        model.eval()
        device = next(model.parameters()).device
        total = weight = 0.0
        try:
            for i in range(0, len(self.seqs), self.batch_size):
                b = collate(self.seqs[i : i + self.batch_size], self.pad_id)
                with autocast():
                    parts = weighted_lm_loss(model, {k: v.to(device) for k, v in b.items()})
                total += float(parts.loss_sum)
                weight += float(parts.weight_sum)
        finally:
            model.train(was)
        return total / max(weight, 1e-9)

    def measure_base(self, model: nn.Module, autocast: Callable[[], Any]) -> float:
        """The base model's general loss (adapters switched off; a full fine-tune is measured before step 1)."""
        with adapters_off(model):
            self.base_loss = self.loss(model, autocast)
        return self.base_loss

    def check(self, model: nn.Module, autocast: Callable[[], Any]) -> dict[str, float]:
        g = self.loss(model, autocast)
        rise = math.exp(min(g - (self.base_loss or g), 50)) - 1
        return {"general_loss": g, "general_ppl_rise": rise}


def build_guard(cfg: Any, tok: Any, pad_id: int) -> Guard:
    """`forgetting.guard_examples` general examples (the `forgetting.data` pool, shuffled apart from replay's)."""
    seqs = _fitting_general(cfg, tok, cfg.seed + 43, cfg.forgetting.guard_examples, "guard")
    if not seqs:
        raise DataError(
            "no general example fits data.max_length for the forgetting guard",
            "raise data.max_length, or set forgetting.guard: false",
        )
    seqs.sort(key=len)  # batches of similar length: less padding
    return Guard(
        seqs, pad_id, cfg.forgetting.max_general_rise, cfg.train.batch_size * 2, cfg.forgetting.guard is True
    )
