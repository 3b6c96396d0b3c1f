"""LoRA through `peft`: low-rank adapters on chosen linear layers; the base weights stay frozen."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import Field
from torch import nn

from tuneforge.config import MethodConfig
from tuneforge.methods.registry import MethodSpec, register


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


def prepare(model: nn.Module, cfg: LoraMethodConfig) -> nn.Module:
    lcfg = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        bias=cfg.bias,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg)


def save(model: nn.Module, out_dir: Path) -> None:
    # Standard PEFT layout: adapter_config.json + adapter_model.safetensors.
    model.save_pretrained(str(out_dir), safe_serialization=True)


def load(base: nn.Module, artifact_dir: Path) -> nn.Module:
    return PeftModel.from_pretrained(base, str(artifact_dir), is_trainable=False)


register(
    MethodSpec(
        name="lora",
        config_cls=LoraMethodConfig,
        summary="Low-rank adapters (peft); small artifact, base frozen.",
        prepare=prepare,
        save=save,
        load=load,
        artifact="adapter",
    )
)
