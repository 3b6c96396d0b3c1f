"""The causal-LM loss computed only where it matters.

The transformer runs on the whole batch, but the LM head (576 x 49k for SmolLM2 — a fifth of the model's compute
per token) and the cross-entropy run only on the positions that carry loss, in chunks and with the gradient
formed on the way forward (ops/fused_ce.py), so no full logits tensor ever exists. Prompt tokens and padding cost
nothing there. Training (train/objectives.py) and evaluation (eval/compare.py) share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.ops.fused_ce import fused_linear_cross_entropy


@dataclass
class LossParts:
    loss_sum: torch.Tensor  # sum of weight * cross-entropy (keeps the graph)
    weight_sum: float  # sum of weights (the normaliser)
    correct: float  # weighted count of argmax == target (token accuracy)


def backbone_and_head(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None, nn.Module]:
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
    decoder, head, base = backbone_and_head(model)
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
