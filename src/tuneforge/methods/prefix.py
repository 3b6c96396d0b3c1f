"""Prefix tuning through `peft`: trained key/value vectors prepended at every layer (as a KV-cache prefix).
Nothing of the base model changes; the artifact holds only the prefix."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from tuneforge.config import MethodConfig
from tuneforge.methods.peft_common import no_packing, register_peft, task_type


class PrefixMethodConfig(MethodConfig):
    name: str = "prefix"
    num_virtual_tokens: int = Field(16, ge=1, description="Prefix length (key/value positions per layer).")
    prefix_projection: bool = Field(
        False,
        description="Train the prefix through a two-layer MLP (steadier, more parameters while training).",
    )
    encoder_hidden_size: int | None = Field(
        None, ge=1, description="Hidden size of that MLP (default: the model's hidden size)."
    )


def build(model: nn.Module, cfg: PrefixMethodConfig):
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(
        num_virtual_tokens=cfg.num_virtual_tokens,
        prefix_projection=cfg.prefix_projection,
        encoder_hidden_size=cfg.encoder_hidden_size or model.config.hidden_size,
        task_type=task_type(model),
    )


register_peft(
    "prefix",
    PrefixMethodConfig,
    "Prefix tuning: trained key/value vectors before every layer's context (peft).",
    build,
    check=no_packing("prefix tuning"),
    reference_lr=1e-2,  # PEFT's prefix-tuning examples
    lr_scales_with_width=False,
)
