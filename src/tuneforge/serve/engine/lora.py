"""LoRA adapters for the batched engine: each adapter's A and B matrices per (layer, projection), read from the
run's adapter folder, with the adapter's scale folded into B so a row's update is one `x @ A.T @ B.T`.

Only plain LoRA on the decoder's projections fits this path. DoRA (a per-column magnitude that needs the merged
weight's norm), IA3 (scales, not low-rank updates), prompt/prefix tuning (extra positions), trained biases,
embeddings or modules_to_save change something else than a projection's output by a low-rank term: those
adapters are served on the serial path, and `unsupported()` says why.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@dataclass(eq=False)  # compared by identity: the decoder groups rows that hold the same object
class LoraWeights:
    name: str
    pairs: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.pairs.values())


def unsupported(folder: Path) -> str | None:
    """Why this adapter cannot be batched (None: it can)."""
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        return f"its adapter_config.json cannot be read ({e})"
    kind = cfg.get("peft_type")
    if kind != "LORA":
        return f"{kind} adapters are not low-rank updates of the projections"
    checks = {
        "use_dora": "DoRA rescales each weight column by its merged norm",
        "modules_to_save": "it trains whole modules (modules_to_save)",
        "trainable_token_indices": "it trains token embeddings",
        "layer_replication": "it replicates layers",
        "lora_bias": "it trains a LoRA bias",
        "target_parameters": "it targets parameters, not modules",
    }
    for key, why in checks.items():
        if cfg.get(key):
            return why
    if cfg.get("bias", "none") != "none":
        return f"it trains biases (bias={cfg['bias']!r})"
    targets = cfg.get("target_modules") or []
    extra = sorted(set([targets] if isinstance(targets, str) else targets) - PROJECTIONS)
    if extra:
        return f"it targets modules outside the decoder's projections ({', '.join(extra)})"
    return None


def load(folder: Path, name: str, dtype: torch.dtype, device: torch.device) -> LoraWeights:
    """Read an adapter that `unsupported(folder)` accepted."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    found: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.search(key)
        if m is None or m.group(2) not in PROJECTIONS:
            raise ValueError(f"adapter tensor {key!r} is not a LoRA matrix of a decoder projection")
        found.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = t
    out = LoraWeights(name)
    for (layer, proj), ab in sorted(found.items()):
        a, b = ab["A"], ab["B"]
        r = a.shape[0]
        alpha = _pattern(cfg.get("alpha_pattern") or {}, layer, proj, cfg.get("lora_alpha", r))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out.pairs[(layer, proj)] = (
            a.to(device=device, dtype=dtype).contiguous(),
            (b.float() * scale).to(device=device, dtype=dtype).contiguous(),
        )
    return out


def _pattern(patterns: dict, layer: int, proj: str, default: float) -> float:
    """PEFT's alpha_pattern: a key matches the module's name or its tail (a regex, as PEFT reads it)."""
    for key, value in patterns.items():
        for module in (f"model.layers.{layer}.self_attn.{proj}", f"model.layers.{layer}.mlp.{proj}"):
            if re.fullmatch(rf"(.*\.)?{key}", module):
                return value
    return default
