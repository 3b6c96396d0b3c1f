"""QLoRA: LoRA adapters over a base model held in 4-bit NF4 (bitsandbytes), with bf16 compute.

It needs a CUDA GPU and the `bitsandbytes` package (`pip install 'tuneforge[qlora]'`); elsewhere the config is
refused at validation, pointing at `lora` or `dora`, which train the same adapter over a float base. The artifact
is a standard LoRA adapter: it loads onto the float base as well as onto a 4-bit one.
"""

from __future__ import annotations

import importlib.util

from pydantic import Field
from torch import nn

from tuneforge.config import RunConfig
from tuneforge.methods import peft_common
from tuneforge.methods.lora import LoraMethodConfig, lora_config
from tuneforge.methods.registry import MethodSpec, register


class QLoraMethodConfig(LoraMethodConfig):
    name: str = "qlora"
    quant_type: str = Field("nf4", pattern="^(nf4|fp4)$", description="4-bit data type: nf4 or fp4.")
    double_quant: bool = Field(
        True, description="Quantise the quantisation constants too (saves ~0.4 bit/weight)."
    )


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check(cfg: RunConfig) -> None:
    if not cuda_available():
        raise ValueError(
            "qlora quantises the base model to 4 bits with bitsandbytes, which needs a CUDA GPU and this "
            "machine has none: use method lora (or dora) instead — the same adapter over a float base"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(
            "qlora needs the bitsandbytes package: pip install 'tuneforge[qlora]' (or use method lora)"
        )


def load_options(cfg: QLoraMethodConfig) -> dict:
    """from_pretrained arguments that load the base weights straight into 4-bit on the GPU."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.quant_type,
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=compute,
        ),
        "device_map": {"": torch.cuda.current_device()},
    }


def prepare(model: nn.Module, cfg: QLoraMethodConfig) -> nn.Module:
    from peft import prepare_model_for_kbit_training

    # Casts norms and the head to fp32 for stable training and makes the inputs require grad (for checkpointing).
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return peft_common.wrap(model, lora_config(model, cfg))


register(
    MethodSpec(
        name="qlora",
        config_cls=QLoraMethodConfig,
        summary="LoRA over a 4-bit NF4 base (bitsandbytes; CUDA only): least GPU memory.",
        prepare=prepare,
        save=peft_common.save,
        load=peft_common.load,
        artifact="adapter",
        check=check,
        load_options=load_options,
    )
)
