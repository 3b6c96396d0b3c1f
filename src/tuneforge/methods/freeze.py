"""Partial fine-tuning: freeze the embeddings and the bottom N transformer layers, train the rest."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from tuneforge.config import MethodConfig
from tuneforge.methods import full
from tuneforge.methods.registry import MethodSpec, register
from tuneforge.models.load import decoder_layers, save_model_folder


class FreezeMethodConfig(MethodConfig):
    name: str = "freeze"
    freeze_layers: int = Field(
        ..., ge=0, description="Bottom transformer layers kept frozen (the embeddings are frozen too)."
    )
    train_embeddings: bool = Field(False, description="Also train the token embeddings (and a tied LM head).")


def prepare(model: nn.Module, cfg: FreezeMethodConfig) -> nn.Module:
    layers = decoder_layers(model)
    if cfg.freeze_layers > len(layers):
        raise ValueError(
            f"method.freeze_layers={cfg.freeze_layers} but the model has {len(layers)} layers; "
            f"use a value from 0 to {len(layers)}"
        )
    for p in model.parameters():
        p.requires_grad_(True)
    for layer in layers[: cfg.freeze_layers]:
        for p in layer.parameters():
            p.requires_grad_(False)
    if not cfg.train_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    return model


register(
    MethodSpec(
        name="freeze",
        config_cls=FreezeMethodConfig,
        summary="Freeze the bottom N layers and the embeddings, train the rest.",
        prepare=prepare,
        save=save_model_folder,
        load=full.load,
        artifact="model",
    )
)
