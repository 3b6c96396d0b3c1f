"""Gradual unfreezing (ULMFiT): start by training the top layers only and unfreeze one more group of layers,
top-down, every `every` epochs (or steps). The lower layers, which hold the most general features, move last and
least — a guard against catastrophic forgetting on small datasets. Combines with `layer_lr_decay`.

The schedule is a pure function of the step: `on_step` sets what trains before every optimizer step, so a run
resumed from a checkpoint has exactly the layers unfrozen that the uninterrupted run had. The optimizer holds every
parameter that will ever train from the start; frozen ones have no gradient and AdamW skips them.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field
from torch import nn

from tuneforge.methods import full, llrd
from tuneforge.methods.registry import MethodSpec, register
from tuneforge.models.load import decoder_layers, save_model_folder


class UnfreezeMethodConfig(llrd.LayerDecayOptions):
    name: str = "unfreeze"
    initial_layers: int = Field(1, ge=0, description="Top transformer layers trained from the first step.")
    layers_per_stage: int = Field(1, ge=1, description="Layers unfrozen at each stage, top-down.")
    every: float = Field(
        1.0, gt=0, description="Length of a stage, in `unit`s (fractions of epochs allowed)."
    )
    unit: Literal["epoch", "step"] = Field("epoch", description="Stages by epoch or by optimizer step.")
    train_embeddings: bool = Field(
        False,
        description="Unfreeze the token embeddings (and a tied LM head) as one more stage after the lowest layer.",
    )


def stage_at(cfg: UnfreezeMethodConfig, step: int, epoch: float) -> int:
    done = step if cfg.unit == "step" else epoch
    return math.floor(done / cfg.every + 1e-9)


def _set_stage(model: nn.Module, cfg: UnfreezeMethodConfig, stage: int) -> tuple[int, bool]:
    """Make the top (initial_layers + stage * layers_per_stage) layers trainable. Returns (layers, embeddings)."""
    layers = decoder_layers(model)
    n = min(len(layers), cfg.initial_layers + stage * cfg.layers_per_stage)
    emb = cfg.train_embeddings and cfg.initial_layers + stage * cfg.layers_per_stage > len(layers)
    for i, layer in enumerate(layers):
        for p in layer.parameters():
            p.requires_grad_(i >= len(layers) - n)
    model.get_input_embeddings().weight.requires_grad_(emb)
    return n, emb


def prepare(model: nn.Module, cfg: UnfreezeMethodConfig) -> nn.Module:
    for p in model.parameters():  # final norm, an untied LM head: trained throughout
        p.requires_grad_(True)
    _set_stage(model, cfg, 0)
    return model


def eventually_trained(model: nn.Module, cfg: UnfreezeMethodConfig) -> list[nn.Parameter]:
    emb = model.get_input_embeddings().weight
    return [p for p in model.parameters() if cfg.train_embeddings or p is not emb]


def param_groups(model: nn.Module, cfg: UnfreezeMethodConfig, lr: float) -> list[dict]:
    return llrd.param_groups(model, cfg, lr, params=eventually_trained(model, cfg))


def on_step(model: nn.Module, cfg: UnfreezeMethodConfig, step: int, epoch: float) -> str | None:
    layers = decoder_layers(model)
    before = sum(1 for layer in layers if next(layer.parameters()).requires_grad)
    emb_before = model.get_input_embeddings().weight.requires_grad
    n, emb = _set_stage(model, cfg, stage_at(cfg, step, epoch))
    if (n, emb) == (before, emb_before):
        return None
    return f"Gradual unfreezing at step {step}: top {n} of {len(layers)} layers train" + (
        " and the embeddings" if emb else ""
    )


register(
    MethodSpec(
        name="unfreeze",
        config_cls=UnfreezeMethodConfig,
        summary="Gradual unfreezing: top layers first, one more layer group every epoch/N steps (ULMFiT).",
        prepare=prepare,
        save=save_model_folder,
        load=full.load,
        artifact="model",
        reference_lr=2e-5,  # every weight moves: a tenth of LoRA's
        param_groups=param_groups,
        on_step=on_step,
    )
)
