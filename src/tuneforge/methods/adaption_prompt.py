"""LLaMA-Adapter-style adaption prompts through `peft`: trained prompt tokens attended to by the top layers
through a zero-initialised gate, so training starts from the base model's exact behaviour. Llama, Mistral and
GPT-2 style models (SmolLM2 is a Llama)."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from tuneforge.config import MethodConfig
from tuneforge.methods.peft_common import no_packing, register_peft

SUPPORTED = ("llama", "mistral", "gpt2")


class AdaptionPromptMethodConfig(MethodConfig):
    name: str = "adaption_prompt"
    adapter_len: int = Field(10, ge=1, description="Adaption prompt tokens per adapted layer.")
    adapter_layers: int | None = Field(
        None, ge=1, description="Adapt the top N layers (default: all of them)."
    )


def build(model: nn.Module, cfg: AdaptionPromptMethodConfig):
    from peft import AdaptionPromptConfig

    kind = getattr(model.config, "model_type", "?")
    if kind not in SUPPORTED:
        from tuneforge.errors import ConfigError

        raise ConfigError(
            f"adaption prompts support {', '.join(SUPPORTED)} models, not {kind}", "use method lora or prefix"
        )
    n = model.config.num_hidden_layers
    return AdaptionPromptConfig(
        adapter_len=cfg.adapter_len,
        adapter_layers=min(cfg.adapter_layers or n, n),
        task_type="CAUSAL_LM",
    )


register_peft(
    "adaption_prompt",
    AdaptionPromptMethodConfig,
    "LLaMA-Adapter: gated prompt tokens in the top layers, zero-init (peft; Llama/Mistral/GPT-2).",
    build,
    check=no_packing("adaption_prompt"),
    reference_lr=9e-3,  # LLaMA-Adapter's paper
    lr_scales_with_width=False,
)
