"""Training objectives: what the loop minimises, and how examples become the items it trains on.

SFT (cross-entropy on the answer tokens through ops/lm_loss.py) is the default; preference objectives (DPO, ORPO:
train/preference.py; KTO: train/kto.py), reinforcement from rewards (GRPO: train/grpo.py) and the forgetting
mitigations (distillation: train/forgetting.py) are others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.config import RunConfig
from tuneforge.ops.lm_loss import weighted_lm_loss


# ------------------------------------------------------------------------------------------------ objectives
# The loop trains whatever an Objective says: it turns examples into training items, items into batches, and
# batches into a summed loss with its normaliser. SFT is the default and calls weighted_lm_loss unchanged;
# preference objectives (train/preference.py, train/kto.py) and the forgetting mitigations (train/forgetting.py) are
# others.
@dataclass
class StepLoss:
    loss_sum: torch.Tensor  # summed over the batch's units (target tokens, or pairs); keeps the graph
    norm: float  # how many units: the step's loss is sum(loss_sum) / sum(norm) over its micro-batches
    correct: float  # units judged right (argmax == target, or chosen preferred to rejected)
    stats: dict[str, float] = field(default_factory=dict)  # other sums over the units, logged divided by norm


class Objective:
    """SFT: cross-entropy on the answer tokens, through the fused LM head (ops/lm_loss.py)."""

    name = "sft"
    accuracy = "token_accuracy"  # the name under which `correct / norm` is logged
    pairs = False  # training items are (chosen, rejected) pairs: two trained rows each
    perplexity = True  # validation reports exp(loss) (meaningless for a preference or a classification loss)

    def tokenize(self, examples, tok, data_cfg, labels, split):
        from tuneforge.data.tokenize import tokenize_examples

        return tokenize_examples(examples, tok, data_cfg, labels, split)

    def collate(self, items, pad_id: int) -> dict[str, torch.Tensor]:
        from tuneforge.data.collate import collate

        return collate(items, pad_id)

    def norm(self, batch: dict[str, torch.Tensor]) -> float:
        return float(batch["weights"][:, 1:].sum())

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepLoss:
        parts = weighted_lm_loss(model, batch)
        return StepLoss(parts.loss_sum, parts.weight_sum, parts.correct)

    def validation(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepLoss:
        """The held-out loss (the training loss, unless a wrapper adds terms that validation leaves out)."""
        return self.loss(model, batch)

    def begin_step(self, step: int) -> None:
        """Called before each optimizer step's micro-batches (GRPO seeds its sampling from the step)."""

    def step_stats(self) -> dict[str, float]:
        """Figures of the step just done that are not sums over its units (GRPO: seconds spent sampling)."""
        return {}


def build_objective(cfg: RunConfig) -> Objective:
    """The language-model run's objective: SFT, DPO, ORPO or KTO (`objective.name`); with `forgetting.distill`, SFT
    plus a KL term towards the base model (train/forgetting.py; recipes/build.py allows distillation with SFT only)."""
    o = cfg.objective
    name = o.name
    if name == "sft":
        obj: Objective = Objective()
    elif name == "kto":
        from tuneforge.train.kto import KTO

        obj = KTO(o.beta, o.desirable_weight, o.undesirable_weight)
    elif name == "grpo":
        from tuneforge.train.grpo import GRPO

        obj = GRPO(o, cfg.seed)
    else:
        from tuneforge.train.preference import DPO, ORPO

        obj = {"dpo": DPO, "orpo": ORPO}[name](o.beta)
    if cfg.forgetting.distill > 0:
        from tuneforge.train.forgetting import Distill

        obj = Distill(cfg.forgetting.distill, cfg.forgetting.temperature)
    return obj


class Classification(Objective):
    """Cross-entropy over the labels of a sequence-classification head (recipes/classify.py). Items are
    `Labeled` token ids, padded by the head's own tokenizer; the units are texts."""

    name = "classification"
    accuracy = "accuracy"
    perplexity = False

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def tokenize(self, examples, tok, data_cfg, labels, split):
        from tuneforge.data.tokenize import encode_labeled

        return encode_labeled(examples, tok, labels, data_cfg.max_length), None

    def collate(self, items, pad_id: int) -> dict[str, torch.Tensor]:
        from tuneforge.data.collate import collate_labeled

        return collate_labeled(items, self.tokenizer)

    def norm(self, batch: dict[str, torch.Tensor]) -> float:
        return float(len(batch["labels"]))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepLoss:
        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        loss = F.cross_entropy(logits, labels, reduction="sum")
        correct = float((logits.argmax(-1) == labels).sum())
        return StepLoss(loss, float(len(labels)), correct)
