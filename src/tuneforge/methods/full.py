"""Full fine-tuning: every parameter is trained; the artifact is a complete model folder.
Option: layer-wise learning-rate decay (`layer_lr_decay`, see llrd.py)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tuneforge.methods import llrd
from tuneforge.methods.registry import MethodSpec, register
from tuneforge.models.load import load_state_into, save_model_folder


class FullMethodConfig(llrd.LayerDecayOptions):
    name: str = "full"


def prepare(model: nn.Module, cfg: FullMethodConfig) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def load(base: nn.Module, artifact_dir: Path) -> nn.Module:
    return load_state_into(base, artifact_dir)


register(
    MethodSpec(
        name="full",
        config_cls=FullMethodConfig,
        summary="Train every weight; largest artifact and memory, most capacity. Option: layer_lr_decay.",
        prepare=prepare,
        save=save_model_folder,
        load=load,
        artifact="model",
        reference_lr=2e-5,  # every weight moves: a tenth of LoRA's
        param_groups=llrd.param_groups,
    )
)
