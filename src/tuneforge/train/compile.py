"""torch.compile of the decoder layers for the training step (`train.compile`).

Inductor fuses what eager PyTorch runs as separate passes over memory — RMSNorm, rotary embeddings, SiLU x up,
the LoRA scaling and residual adds — and frees intermediates sooner. On the 2-core CPU it trains SmolLM2 + LoRA
about 18% faster with 0.2 GB less peak memory (bench/README.md). The first run on a machine compiles for a few
seconds per graph (about 15 s in all for SmolLM2; the result is cached on disk for later runs).

Only the training step runs compiled: validation, the memory probe and generation run eagerly, so decoding
shapes never trigger compilation. The graph is compiled with dynamic shapes (sequence lengths vary from batch
to batch) and dynamo falls back to eager code for anything it cannot compile.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import torch
from torch import nn

from tuneforge.errors import ConfigError
from tuneforge.models.load import decoder_layers

# Compiled by `auto` (measured, tested). DoRA compiles too (train.compile: true) but into ~15x more graph pieces.
AUTO_METHODS = ("lora", "rslora")


def unsupported(device: torch.device) -> str | None:
    """Why torch.compile cannot run on this device, or None."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "Triton is not installed (pip install triton)"
        return None
    if device.type == "cpu":
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return "no C++ compiler was found (install g++: apt install g++)"
        return None
    return f"torch.compile is not set up for {device.type} here"


def resolve(setting: bool | str, method: str, device: torch.device) -> tuple[bool, str]:
    """(compile?, why) for `train.compile`: True, False or "auto" (the config turns "true"/"false" into bools)."""
    if setting is False:
        return False, "train.compile is false"
    why_not = unsupported(device)
    if setting is True:
        if why_not:
            raise ConfigError(
                f"train.compile is true but {why_not}", "install it, or set train.compile: auto"
            )
        return True, "train.compile is true"
    if why_not:
        return False, why_not
    if method not in AUTO_METHODS:
        return False, f"auto compiles {', '.join(AUTO_METHODS)} runs; set train.compile: true to try {method}"
    return True, f"auto: {method} on {device.type}"


class CompiledLayers:
    """The decoder layers' compiled callables, switched on only inside `active()`."""

    def __init__(self, model: nn.Module):
        self.layers = list(decoder_layers(model))
        self.compiled = [torch.compile(layer._call_impl, dynamic=True) for layer in self.layers]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        for layer, fn in zip(self.layers, self.compiled, strict=True):
            layer._compiled_call_impl = fn
        try:
            with torch._dynamo.config.patch(suppress_errors=True):
                yield
        finally:
            for layer in self.layers:
                layer._compiled_call_impl = None
