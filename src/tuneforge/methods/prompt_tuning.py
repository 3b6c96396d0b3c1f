"""Prompt tuning through `peft`: a few trained embedding vectors ("soft prompt") put before every input.
The smallest artifact of all; works best on larger models. Can start from the embedding of a text."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from tuneforge.config import MethodConfig
from tuneforge.methods.peft_common import no_packing, register_peft, task_type


class PromptTuningMethodConfig(MethodConfig):
    name: str = "prompt_tuning"
    num_virtual_tokens: int = Field(16, ge=1, description="Soft-prompt length in tokens.")
    init_text: str | None = Field(
        None,
        description="Start the soft prompt from this text's token embeddings (e.g. a task instruction); "
        "default: random.",
    )


def build(model: nn.Module, cfg: PromptTuningMethodConfig):
    from peft import PromptTuningConfig, PromptTuningInit

    extra = {}
    if cfg.init_text:
        # The tokenizer sits next to the weights in every folder tuneforge loads from (converted GGUF, runs).
        extra = dict(
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=cfg.init_text,
            tokenizer_name_or_path=model.config._name_or_path,
        )
    return PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type=task_type(model), **extra)


register_peft(
    "prompt_tuning",
    PromptTuningMethodConfig,
    "Prompt tuning: a trained soft prompt of N virtual tokens before every input (peft).",
    build,
    check=no_packing("prompt tuning"),
    reference_lr=3e-2,  # PEFT's prompt-tuning examples (Lester et al. 2021 used 0.3)
    lr_scales_with_width=False,
)
