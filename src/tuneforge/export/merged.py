"""`merged`: the adapter folded into the base weights, written as a plain Hugging Face folder.

transformers, vLLM and TGI load it with no tuneforge code: safetensors weights, config.json, the tokenizer with the
chat template the run was trained with, and a generation_config.json whose eos_token_id lists every stop token
(the end-of-turn token first) — the omission that makes exported chat models talk on past their answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneforge.errors import ExportError
from tuneforge.export.common import stop_tokens
from tuneforge.models.load import save_model_folder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def merge(model: nn.Module) -> nn.Module:
    """The plain transformers model of a trained run: adapters folded in and their wrappers removed (LoRA, DoRA,
    IA3 ...), or the model itself for a full fine-tune. Prompt-learning methods add virtual tokens that no weight
    can hold, so they cannot be merged."""
    if not getattr(model, "peft_config", None):
        return model
    cfg = next(iter(model.peft_config.values()))
    if getattr(cfg, "is_prompt_learning", False) or getattr(cfg, "peft_type", "") == "ADAPTION_PROMPT":
        raise ExportError(
            f"a {cfg.peft_type.value.lower()} adapter adds virtual tokens that cannot be merged into the weights",
            "serve the run with `tuneforge serve`, or train it with method lora to export it",
        )
    return model.merge_and_unload()


def write(model: nn.Module, tok: Any, out: Path, dtype: str = "float32", hub_id: str | None = None) -> dict:
    """Write the merged model and its tokenizer into `out` (an existing, empty folder)."""
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
    model = model.to(DTYPES[dtype])
    stops = stop_tokens(tok)
    gen = model.generation_config
    gen.eos_token_id = [i for i, _ in stops]
    gen.pad_token_id = tok.pad_token_id
    if tok.bos_token_id is not None:
        gen.bos_token_id = tok.bos_token_id
    model.config.torch_dtype = dtype
    save_model_folder(model, out)
    tok.save_pretrained(out)
    if hub_id:  # where the weights came from, for model cards and for tools that look for a base model
        cfg_path = Path(out) / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["_name_or_path"] = hub_id
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return {"dtype": dtype, "stop_tokens": [t for _, t in stops], "base": hub_id}
