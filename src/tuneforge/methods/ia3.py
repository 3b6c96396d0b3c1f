"""IA3 through `peft`: learned vectors that rescale the keys, values and feed-forward activations. The fewest
trained parameters of the adapter methods (a few thousand per layer); the base stays frozen."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from tuneforge.config import MethodConfig
from tuneforge.methods.peft_common import register_peft, task_type


class IA3MethodConfig(MethodConfig):
    name: str = "ia3"
    target_modules: list[str] | None = Field(
        None,
        description="Layers whose outputs are rescaled (default for Llama-like models: k_proj, v_proj, down_proj).",
    )
    feedforward_modules: list[str] | None = Field(
        None,
        description="Which of target_modules are feed-forward (their input is rescaled); default down_proj.",
    )


def build(model: nn.Module, cfg: IA3MethodConfig):
    from peft import IA3Config

    return IA3Config(
        target_modules=cfg.target_modules,
        feedforward_modules=cfg.feedforward_modules,
        task_type=task_type(model),
    )


register_peft(
    "ia3",
    IA3MethodConfig,
    "IA3: learned rescaling vectors on keys, values and feed-forward (peft); tiniest adapter.",
    build,
    reference_lr=3e-3,  # IA3's published rate (its vectors start at 1)
    lr_scales_with_width=False,
)
