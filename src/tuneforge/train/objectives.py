"""Training objectives: what the loop minimises, and how examples become the items it trains on.

SFT (cross-entropy on the answer tokens through ops/lm_loss.py) is the default; preference objectives (DPO, ORPO:
train/preference.py) and the forgetting mitigations (distillation: train/forgetting.py) are others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tuneforge.ops.lm_loss import weighted_lm_loss


# ------------------------------------------------------------------------------------------------ objectives
# The loop trains whatever an Objective says: it turns examples into training items, items into batches, and
# batches into a summed loss with its normaliser. SFT is the default and calls weighted_lm_loss unchanged;
# preference objectives (train/preference.py) and the forgetting mitigations (train/forgetting.py) are others.
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
    pairs = False  # training items are (chosen, rejected) pairs

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


def build_objective(cfg) -> Objective:
    """The run's objective: SFT, DPO or ORPO, wrapped by the forgetting mitigations it asks for."""
    name = cfg.objective.name
    if name == "sft":
        obj: Objective = Objective()
    else:
        from tuneforge.train.preference import DPO, ORPO

        obj = {"dpo": DPO, "orpo": ORPO}[name](cfg.objective.beta)
    if cfg.forgetting.distill > 0:
        from tuneforge.train.forgetting import Distill

        obj = Distill(cfg.forgetting.distill, cfg.forgetting.temperature)
    return obj


def check_objective(cfg) -> None:
    """Combinations that cannot work are refused when the config is built, saying what to use instead."""
    from tuneforge.methods import registry

    o, f = cfg.objective, cfg.forgetting
    spec = registry.get(cfg.method.name)
    adapters = spec.artifact == "adapter"
    if o.name in ("dpo", "orpo"):
        if cfg.data.format not in ("auto", "preference"):
            raise ValueError(
                f"objective {o.name} learns from preference pairs but data.format is {cfg.data.format}: give "
                "records with prompt/chosen/rejected (data.format: preference), or use objective sft"
            )
        if cfg.train.packing:
            raise ValueError(f"objective {o.name} compares whole answers: set train.packing to false")
        if f.replay > 0 or f.distill > 0:
            raise ValueError(
                f"forgetting.replay and forgetting.distill work with objective sft; with {o.name} use "
                "forgetting.ewc (dpo's beta already keeps the model near its reference)"
            )
        if o.name == "dpo" and not adapters:
            raise ValueError(
                f"objective dpo takes its reference from the base model with adapters off, and method "
                f"{cfg.method.name} has none: use method lora, or objective orpo (no reference model)"
            )
    if f.distill > 0 and not adapters:
        raise ValueError(
            f"forgetting.distill compares with the base model (the same weights with adapters off), and method "
            f"{cfg.method.name} has no adapters: use method lora, or forgetting.replay / forgetting.ewc"
        )
