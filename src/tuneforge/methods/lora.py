"""LoRA through `peft`: low-rank adapters on chosen linear layers; the base weights stay frozen.

Two variants are options of the same config and also registered under their own names:
- `rslora` (rank-stabilised LoRA): the update is scaled by alpha / sqrt(r) instead of alpha / r, so higher
  ranks keep learning instead of being damped;
- `dora` (weight-decomposed LoRA): the weight's direction gets the low-rank update and its magnitude is
  trained separately; closer to full fine-tuning at a small extra cost per step.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from tuneforge.config import MethodConfig
from tuneforge.methods.peft_common import register_peft, task_type


class LoraMethodConfig(MethodConfig):
    name: str = "lora"
    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: float = Field(32, gt=0, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout on the adapter input (0 is fastest on CPU: no copy of every input).",
    )
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Layers to adapt: `all-linear`, or names such as [q_proj, k_proj, v_proj, o_proj].",
    )
    bias: str = Field("none", description="Train biases too: none | all | lora_only.")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r) (method `rslora`).")
    use_dora: bool = Field(
        False, description="Weight-decomposed LoRA: train magnitude and direction apart (method `dora`)."
    )


class RsLoraMethodConfig(LoraMethodConfig):
    name: str = "rslora"
    use_rslora: bool = Field(True, description="Rank-stabilised scaling alpha / sqrt(r).")


class DoraMethodConfig(LoraMethodConfig):
    name: str = "dora"
    use_dora: bool = Field(True, description="Weight-decomposed LoRA: train magnitude and direction apart.")


def lora_config(model: nn.Module, cfg: LoraMethodConfig, **extra):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        bias=cfg.bias,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        task_type=task_type(model),
        **extra,
    )


register_peft("lora", LoraMethodConfig, "Low-rank adapters (peft); small artifact, base frozen.", lora_config)
register_peft(
    "rslora",
    RsLoraMethodConfig,
    "LoRA scaled by alpha/sqrt(r): higher ranks keep learning.",
    lora_config,
)
register_peft(
    "dora",
    DoraMethodConfig,
    "Weight-decomposed LoRA (magnitude + direction); closer to full tuning, slower steps.",
    lora_config,
)
