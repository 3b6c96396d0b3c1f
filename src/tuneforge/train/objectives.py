"""Training losses.

`weighted_lm_loss` is the causal-LM objective computed only where it matters: the transformer runs on the
whole batch, but the LM head (576 x 49k for SmolLM2 — a fifth of the model's compute per token) and the
cross-entropy run only on the positions that carry loss, in chunks and with the gradient formed on the way
forward (train/fused_ce.py), so no full logits tensor ever exists. Prompt tokens and padding cost nothing there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.train.fused_ce import fused_linear_cross_entropy


@dataclass
class LossParts:
    loss_sum: torch.Tensor  # sum of weight * cross-entropy (keeps the graph)
    weight_sum: float  # sum of weights (the normaliser)
    correct: float  # weighted count of argmax == target (token accuracy)


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None, nn.Module]:
    """(decoder stack, LM head, base model); None when the model must be called whole (prompt-learning PEFT)."""
    base = model
    peft_cfg = getattr(model, "peft_config", None)
    if peft_cfg is not None:
        if any(c.is_prompt_learning for c in peft_cfg.values()):
            return None, None, model  # virtual tokens are injected by PeftModel.forward
        base = model.get_base_model()
    try:
        return base.get_decoder(), base.get_output_embeddings(), base
    except (AttributeError, NotImplementedError):
        return None, None, base


def weighted_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> LossParts:
    input_ids = batch["input_ids"]
    # Batches are right-padded, and under causal attention a real token never looks at a later position, so the
    # padding needs no mask: attention runs its fastest maskless causal kernel. Packed rows carry position ids
    # instead, from which the model builds a block-diagonal causal mask.
    pos = batch.get("position_ids")
    w = batch["weights"][:, 1:]
    sel = w > 0
    targets = input_ids[:, 1:][sel]
    weights = w[sel]
    decoder, head, base = _backbone_and_head(model)
    if decoder is not None and isinstance(head, nn.Linear) and head.bias is None:
        hidden = decoder(input_ids=input_ids, position_ids=pos, use_cache=False).last_hidden_state
        cap = getattr(base.config, "final_logit_softcapping", None)
        loss_sum, correct = fused_linear_cross_entropy(
            hidden[:, :-1][sel], head.weight, targets, weights, cap
        )
        return LossParts(loss_sum, float(weights.sum()), float(correct))
    out = model(input_ids=input_ids, position_ids=pos, use_cache=False)
    logits = out.logits[:, -input_ids.shape[1] :][:, :-1][sel].float()
    ce = F.cross_entropy(logits, targets, reduction="none")
    with torch.no_grad():
        correct = float(((logits.argmax(-1) == targets).float() * weights).sum())
    return LossParts((ce * weights).sum(), float(weights.sum()), correct)


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
    """SFT: cross-entropy on the answer tokens, through the fused LM head (train/objectives.py)."""

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
