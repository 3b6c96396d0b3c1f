"""Sequence classification: a classification head on an encoder (all-MiniLM-L6-v2: `model.name: minilm-l6`) or a
decoder (SmolLM2: the last token's hidden state is classified), trained by its own recipe (recipes/classify.py) on
classification data (`text` + `label`). The backbone trains fully, through LoRA/DoRA adapters, or not at all
(`freeze_base`: a linear probe). The head always trains.

The artifact folder `model/` holds a transformers model folder (AutoModelForSequenceClassification), or with
adapters a standard PEFT adapter whose saved modules include the head.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from torch import nn

from tuneforge.config import RunConfig
from tuneforge.methods import llrd, peft_common
from tuneforge.methods.registry import MethodSpec, register
from tuneforge.models.classifier import is_head

ADAPTERS = ("none", "lora", "dora")


class ClassifierMethodConfig(llrd.LayerDecayOptions):
    name: str = "classifier"
    adapter: str = Field(
        "none",
        description="How the backbone trains: `none` (all weights), `lora` or `dora` (adapters + head).",
    )
    freeze_base: bool = Field(False, description="Train the head only (a linear probe); with adapter none.")
    r: int = Field(16, ge=1, description="Adapter rank (adapter lora/dora).")
    alpha: float = Field(32, gt=0, description="Adapter scaling numerator (alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Adapter dropout.")
    target_modules: str | list[str] = Field("all-linear", description="Layers that get adapters.")

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, v: str) -> str:
        if v in ("prefix", "prompt_tuning", "adaption_prompt", "ia3", "qlora"):
            raise ValueError(
                f"a classification head cannot be trained with {v} here ({v} conditions generation, and the "
                "head needs the backbone's own hidden states): use adapter lora (or dora), or none; "
                f"or keep {v} with a causal-LM method that answers the label as text (method {v})"
            )
        if v not in ADAPTERS:
            raise ValueError(f"adapter must be one of {', '.join(ADAPTERS)}")
        return v


def check(cfg: RunConfig) -> None:
    m: ClassifierMethodConfig = cfg.method  # type: ignore[assignment]
    if cfg.data.format not in ("auto", "classification"):
        raise ValueError(
            f"method classifier trains a head on text + label records, but data.format is {cfg.data.format}: "
            "set data.format classification (map your fields with data.columns), or use method lora to "
            "answer in text"
        )
    if cfg.train.packing:
        raise ValueError("method classifier classifies whole texts: set train.packing=false")
    if m.freeze_base and m.adapter != "none":
        raise ValueError("freeze_base trains the head alone: use it with adapter none")
    objective = getattr(getattr(cfg, "objective", None), "name", "sft")
    if objective != "sft":
        raise ValueError(f"objective {objective} needs a language-model method: use method lora")


def head_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if is_head(n)]


def prepare(model: nn.Module, cfg: ClassifierMethodConfig) -> nn.Module:
    if cfg.adapter != "none":
        from peft import LoraConfig

        return peft_common.wrap(
            model,
            LoraConfig(
                r=cfg.r,
                lora_alpha=cfg.alpha,
                lora_dropout=cfg.dropout,
                target_modules=cfg.target_modules,
                use_dora=cfg.adapter == "dora",
                task_type="SEQ_CLS",  # peft keeps the head trainable and saves it with the adapter
            ),
        )
    for p in model.parameters():
        p.requires_grad_(not cfg.freeze_base)
    for p in head_params(model):
        p.requires_grad_(True)
    return model


def save(model: nn.Module, out_dir: Path) -> None:
    model.save_pretrained(str(out_dir), safe_serialization=True)


def load(base: nn.Module, artifact_dir: Path) -> nn.Module:
    """`base`: an AutoModelForSequenceClassification of the run's base model (used with adapters only)."""
    if (Path(artifact_dir) / "adapter_config.json").is_file():
        return peft_common.load(base, artifact_dir)
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(artifact_dir))


def param_groups(model: nn.Module, cfg: ClassifierMethodConfig, lr: float) -> list[dict]:
    if cfg.adapter != "none" or cfg.layer_lr_decay == 1.0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    return llrd.param_groups(model, cfg, lr)


register(
    MethodSpec(
        name="classifier",
        config_cls=ClassifierMethodConfig,
        summary="Sequence-classification head on an encoder (minilm-l6) or decoder; accuracy, P/R/F1, confusion.",
        prepare=prepare,
        save=save,
        load=load,
        artifact="model",
        reference_lr=2e-5,  # every weight moves: a tenth of LoRA's
        check=check,
        param_groups=param_groups,
        recipe="classify",
    )
)
