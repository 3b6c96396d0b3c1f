"""`gguf-lora`: the LoRA adapter alone as a GGUF file for llama.cpp's `--lora`, so one base file serves many
tuned adapters (the base GGUF is written beside it).

The layout is the one llama.cpp's convert_lora_to_gguf.py writes: `general.type = adapter`, `adapter.type = lora`,
`adapter.lora.alpha`, and per adapted weight `<gguf name>.lora_a` (rank x in) and `.lora_b` (out x rank). llama.cpp
scales the product by alpha / rank, so rsLoRA's alpha / sqrt(rank) is written as alpha x sqrt(rank); Q and K keep
llama.cpp's rotary layout by permuting the rows of B.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.errors import ExportError
from tuneforge.export.gguf import check_architecture, permute_rotary

FIX = "export --to gguf (the adapter merged into one file) instead"


def check_adapter(peft_cfg: Any) -> float:
    """The alpha llama.cpp needs for this adapter; refuse what a llama.cpp LoRA cannot express."""
    kind = getattr(getattr(peft_cfg, "peft_type", None), "value", str(getattr(peft_cfg, "peft_type", "")))
    if kind != "LORA":
        raise ExportError(f"llama.cpp's --lora takes LoRA adapters, and this run trained {kind.lower()}", FIX)
    if getattr(peft_cfg, "use_dora", False):
        raise ExportError("llama.cpp's --lora cannot apply DoRA's magnitude vectors", FIX)
    if getattr(peft_cfg, "rank_pattern", None) or getattr(peft_cfg, "alpha_pattern", None):
        raise ExportError("llama.cpp applies one alpha to every layer; this adapter has per-layer ranks", FIX)
    if getattr(peft_cfg, "modules_to_save", None):
        raise ExportError(
            f"the run also trained whole modules ({', '.join(peft_cfg.modules_to_save)}), which a LoRA file cannot hold",
            FIX,
        )
    alpha, r = float(peft_cfg.lora_alpha), int(peft_cfg.r)
    return alpha * math.sqrt(r) if getattr(peft_cfg, "use_rslora", False) else alpha


def lora_tensors(adapter_state: dict[str, torch.Tensor], config: Any) -> dict[str, np.ndarray]:
    """PEFT's `...q_proj.lora_A.weight` / `lora_B.weight` under llama.cpp's `blk.N.attn_q.weight.lora_a` / `.lora_b`."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    out: dict[str, np.ndarray] = {}
    for key, t in adapter_state.items():
        for part, suffix in ((".lora_A.weight", "lora_a"), (".lora_B.weight", "lora_b")):
            if not key.endswith(part):
                continue
            module = key[: -len(part)].removeprefix("base_model.model.")
            name = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
            if name is None:
                raise ExportError(f"no GGUF name for the adapted module {module!r}", FIX)
            data = t.detach().to(torch.float32).cpu().numpy()
            if suffix == "lora_b" and module.endswith("q_proj"):
                data = permute_rotary(data, n_head)
            elif suffix == "lora_b" and module.endswith("k_proj"):
                data = permute_rotary(data, n_kv)
            out[f"{name}.{suffix}"] = data
            break
        else:
            raise ExportError(f"the adapter holds {key!r}, which is not a LoRA A or B matrix", FIX)
    return out


def write(adapter_state: dict[str, torch.Tensor], peft_cfg: Any, config: Any, path: Path, name: str) -> dict:
    import gguf

    alpha = check_adapter(peft_cfg)
    arch = check_architecture(config)
    tensors = lora_tensors(adapter_state, config)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for tname, data in tensors.items():
        writer.add_tensor(tname, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"alpha": alpha, "rank": int(peft_cfg.r), "tensors": len(tensors)}
