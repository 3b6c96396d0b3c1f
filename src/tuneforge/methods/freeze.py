"""Partial fine-tuning: freeze the embeddings and the bottom N transformer layers, and/or every parameter whose
name matches a pattern; train the rest. Option: layer-wise learning-rate decay (`layer_lr_decay`)."""

from __future__ import annotations

from fnmatch import fnmatchcase

from pydantic import Field, model_validator
from torch import nn

from tuneforge.methods import full, llrd
from tuneforge.methods.registry import MethodSpec, register
from tuneforge.models.load import decoder_layers, save_model_folder


class FreezeMethodConfig(llrd.LayerDecayOptions):
    name: str = "freeze"
    freeze_layers: int | None = Field(
        None, ge=0, description="Bottom transformer layers kept frozen (the embeddings are frozen too)."
    )
    freeze_modules: list[str] = Field(
        default_factory=list,
        description="Also freeze parameters whose name matches one of these glob patterns, e.g. "
        "['*.self_attn.*'] (attention frozen, MLPs trained) or ['model.layers.1[0-5].*'].",
    )
    train_embeddings: bool = Field(False, description="Also train the token embeddings (and a tied LM head).")

    @model_validator(mode="after")
    def _something_frozen(self) -> FreezeMethodConfig:
        if self.freeze_layers is None and not self.freeze_modules:
            raise ValueError(
                "`method.freeze_layers` is required (or method.freeze_modules: name patterns to freeze)"
            )
        return self


def freeze_by_pattern(model: nn.Module, patterns: list[str]) -> int:
    """Freeze parameters matching any glob pattern; returns how many tensors matched."""
    n = 0
    for name, p in model.named_parameters():
        if any(fnmatchcase(name, pat) for pat in patterns):
            p.requires_grad_(False)
            n += 1
    return n


def prepare(model: nn.Module, cfg: FreezeMethodConfig) -> nn.Module:
    from tuneforge.errors import ConfigError

    layers = decoder_layers(model)
    n_frozen = cfg.freeze_layers or 0
    if n_frozen > len(layers):
        raise ConfigError(
            f"method.freeze_layers={n_frozen} but the model has {len(layers)} layers",
            f"use a value from 0 to {len(layers)}",
        )
    for p in model.parameters():
        p.requires_grad_(True)
    for layer in layers[:n_frozen]:
        for p in layer.parameters():
            p.requires_grad_(False)
    if not cfg.train_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    if cfg.freeze_modules and freeze_by_pattern(model, cfg.freeze_modules) == 0:
        example = next(n for n, _ in model.named_parameters())
        raise ConfigError(
            f"method.freeze_modules {cfg.freeze_modules} match no parameter of this model",
            f"parameter names look like {example!r}",
        )
    return model


register(
    MethodSpec(
        name="freeze",
        config_cls=FreezeMethodConfig,
        summary="Freeze the bottom N layers (and/or modules by name pattern) and the embeddings, train the rest.",
        prepare=prepare,
        save=save_model_folder,
        load=full.load,
        artifact="model",
        reference_lr=2e-5,  # every weight moves: a tenth of LoRA's
        param_groups=llrd.param_groups,
    )
)
