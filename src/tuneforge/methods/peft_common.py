"""What every PEFT-family method shares: wrap the model with `get_peft_model`, save and load a standard PEFT
adapter (adapter_config.json + adapter_model.safetensors), and register. Each method module only says how to
build its `peft` config from its own options."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from tuneforge.config import MethodConfig
from tuneforge.methods.registry import MethodSpec, register

if TYPE_CHECKING:
    from peft import PeftConfig

    from tuneforge.config import RunConfig

BuildFn = Callable[[nn.Module, MethodConfig], "PeftConfig"]


def task_type(model: nn.Module) -> str:
    """PEFT's task type for this model: a classification head or a causal LM."""
    arch = " ".join(getattr(model.config, "architectures", None) or [type(model).__name__])
    return (
        "SEQ_CLS"
        if "SequenceClassification" in arch or "SequenceClassification" in type(model).__name__
        else "CAUSAL_LM"
    )


def wrap(model: nn.Module, peft_config: PeftConfig) -> nn.Module:
    from peft import get_peft_model

    return get_peft_model(model, peft_config)


def save(model: nn.Module, out_dir: Path) -> None:
    model.save_pretrained(str(out_dir), safe_serialization=True)


def load(base: nn.Module, artifact_dir: Path) -> nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(artifact_dir), is_trainable=False)


def continue_adapter(base: nn.Module, where: str) -> nn.Module:
    """A trained PEFT adapter loaded trainable onto `base` (model.adapter): a run folder's adapter, or the
    folder itself."""
    from peft import PeftModel

    from tuneforge.errors import ConfigError
    from tuneforge.rundir import RunDir

    folder = Path(where)
    if RunDir(folder).is_run():
        folder = RunDir(folder).trained_artifact()
    if not (folder / "adapter_config.json").is_file():
        raise ConfigError(
            f"model.adapter {where} is not a trained adapter (no adapter_config.json)",
            "give a LoRA-family run folder or its adapter/ folder",
        )
    return PeftModel.from_pretrained(base, str(folder), is_trainable=True)


def no_packing(what: str) -> Callable[[RunConfig], None]:
    """Refuse sample packing for methods that add virtual tokens: PEFT ignores position ids there, so packed
    examples would attend to each other."""

    def check(cfg: RunConfig) -> None:
        if cfg.train.packing:
            raise ValueError(
                f"{what} adds virtual tokens in front of each row, which cannot be combined with "
                "train.packing (packed examples would see each other): set train.packing=false, "
                "or use method lora"
            )

    return check


def register_peft(
    name: str,
    config_cls: type[MethodConfig],
    summary: str,
    build: BuildFn,
    check: Callable[[RunConfig], None] | None = None,
    **extra,
) -> MethodSpec:
    def prepare(model: nn.Module, cfg: MethodConfig) -> nn.Module:
        return wrap(model, build(model, cfg))

    return register(
        MethodSpec(
            name=name,
            config_cls=config_cls,
            summary=summary,
            prepare=prepare,
            save=save,
            load=load,
            artifact="adapter",
            check=check or (lambda cfg: None),
            **extra,
        )
    )
