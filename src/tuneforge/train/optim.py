"""The optimizer over the method's parameter groups and the learning-rate schedule."""

from __future__ import annotations

import torch

from tuneforge.config import RunConfig
from tuneforge.errors import DataError
from tuneforge.methods import registry


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
