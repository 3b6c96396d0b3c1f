"""Training losses.

`weighted_lm_loss` is the causal-LM objective computed only where it matters: the transformer runs on the
whole batch, but the LM head (576 x 49k for SmolLM2 — a fifth of the model's compute per token) and the
cross-entropy run only on the positions that carry loss. Prompt tokens and padding cost nothing there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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
    mask = batch["attention_mask"]
    w = batch["weights"][:, 1:]
    sel = w > 0
    targets = input_ids[:, 1:][sel]
    weights = w[sel]
    decoder, head, base = _backbone_and_head(model)
    if decoder is not None and head is not None:
        hidden = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        logits = head(hidden[:, :-1][sel])
        cap = getattr(base.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    else:
        out = model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        logits = out.logits[:, -input_ids.shape[1] :][:, :-1][sel]
    logits = logits.float()
    ce = F.cross_entropy(logits, targets, reduction="none")
    with torch.no_grad():
        correct = float(((logits.argmax(-1) == targets).float() * weights).sum())
    return LossParts((ce * weights).sum(), float(weights.sum()), correct)
