"""Fine-tuning methods by name.

Each method is a small module that registers a `MethodSpec`: its config class (a pydantic section whose fields
document themselves), how it prepares a loaded model for training (wrap with adapters, freeze parameters ...),
how it saves what it trained and how it loads that back onto a base model. The training loop knows nothing
about methods beyond this interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from tuneforge.config import MethodConfig, RunConfig


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type[MethodConfig]
    summary: str
    # prepare(model, cfg) -> model ready to train (requires_grad set on exactly the trained parameters)
    prepare: Callable[[nn.Module, MethodConfig], nn.Module]
    # save(model, out_dir): write the trained artifact (a PEFT adapter, or full weights) to out_dir
    save: Callable[[nn.Module, Path], None]
    # load(base_model, artifact_dir) -> model carrying the trained weights
    load: Callable[[nn.Module, Path], nn.Module]
    # artifact: folder name inside the run dir, "adapter" for PEFT methods or "model" for full weights
    artifact: str = "adapter"
    # check(run_cfg): cross-field rules; raise ValueError with what to use instead
    check: Callable[[RunConfig], None] = lambda cfg: None
    # Optional seams; None means "the loop's default".
    # param_groups(model, cfg, lr) -> optimizer groups [{"params": [...], "lr": ...}] (layer-wise LR decay).
    # They must also hold parameters that only become trainable later (gradual unfreezing): the optimizer is
    # built once. Default: one group of the trainable parameters at the run's learning rate.
    param_groups: Callable[[nn.Module, MethodConfig, float], list[dict]] | None = None
    # on_step(model, cfg, step, epoch) runs before every optimizer step and may change requires_grad (gradual
    # unfreezing). It must depend on the step alone, so a resumed run restores the same state; it returns a
    # message when it changed something.
    on_step: Callable[[nn.Module, MethodConfig, int, float], str | None] | None = None
    # load_options(cfg) -> extra from_pretrained arguments for the base model (4-bit quantisation for QLoRA)
    load_options: Callable[[MethodConfig], dict] | None = None
    # recipe: "lm" trains the causal-LM objective (recipes/lm.py); "classify" trains a classification head
    # (recipes/classify.py); both through the one training loop (train/loop.py)
    recipe: str = "lm"
    # The learning rate the field uses for this method on a 7B-class model (hidden size 4096) at batch 8; an
    # `auto` learning rate starts from it (train/auto.py). Rates of weight-matrix updates fall with the model's
    # width (scaled there); those of soft prompts and IA3's scaling vectors do not.
    reference_lr: float = 2e-4
    lr_scales_with_width: bool = True


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> MethodSpec:
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def available() -> list[MethodSpec]:
    _load_builtin()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def _load_builtin() -> None:
    # Importing the modules runs their register() calls.
    from tuneforge.methods import (  # noqa: F401
        adaption_prompt,
        classifier,
        freeze,
        full,
        ia3,
        lora,
        prefix,
        prompt_tuning,
        qlora,
        unfreeze,
    )


def trainable_summary(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
