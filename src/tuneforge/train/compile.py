"""torch.compile of the decoder layers for the training step (`train.compile`).

Inductor fuses what eager PyTorch runs as separate passes over memory — RMSNorm, rotary embeddings, SiLU x up,
the LoRA scaling and residual adds — and frees intermediates sooner. On the 2-core CPU it trained SmolLM2 + LoRA
20% faster than plain eager transformers code, but no faster than the eager step with tuneforge's fused kernels
(ops/fused_ops.py; bench/README.md), so `auto` leaves CPU runs eager. Compiling is not free: the first run on a
machine spends about 50 s on it for SmolLM2 (two graphs: full micro-batches and single-row ones); later runs load the result from inductor's disk
cache in about 5 s. So `auto` runs the first steps eagerly, predicts the rest of the run from them and compiles
only when the saving exceeds the cost (`pays`); this machine's cache state is remembered by a marker per model
shape and method (`CacheMarker`).

Only the training step runs compiled: validation, the memory probe and generation run eagerly, so decoding
shapes never trigger compilation. The graph is compiled with dynamic shapes (sequence lengths vary from batch
to batch) and dynamo falls back to eager code for anything it cannot compile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from tuneforge.errors import ConfigError
from tuneforge.models.load import decoder_layers

# Compiled by `auto` (measured, tested). DoRA compiles too (train.compile: true) but into ~15x more graph pieces.
AUTO_METHODS = ("lora", "rslora")
# The share of step time compiling saves, per device type. CPU, SmolLM2 + LoRA, measured against the eager step
# with tuneforge's fused kernels (ops/fused_ops.py; bench/README.md): ~8% while those covered RMSNorm and SwiGLU
# only; none (compiled/eager 1.008, same steps interleaved in one process) since they cover attention, the LoRA
# projections and the LM head too. GPUs: not measured here; inductor's usual gain, kept from the CPU figure.
# Compiling costs ~50 s with an empty cache and ~5 s with a warm one (CPU). The costs are rounded up: a wrong
# "no" loses little.
SAVING = {"cpu": 0.0, "cuda": 0.08}
COST_COLD_S = 60.0
COST_WARM_S = 8.0
DECIDE_AFTER_STEPS = 2  # eager steps `auto` times before deciding (the first one also warms allocators)


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


def pays(remaining_s: float, warm: bool, device_type: str = "cpu") -> tuple[bool, str]:
    """Whether compiling saves more than it costs, for a run with `remaining_s` seconds of eager training left."""
    share = SAVING.get(device_type, 0.0)
    if share <= 0:
        return False, (
            f"on {device_type} the eager step with tuneforge's fused kernels is as fast as a compiled one "
            "(bench/README.md); set train.compile: true to compile anyway"
        )
    cost = COST_WARM_S if warm else COST_COLD_S
    saving = share * remaining_s
    state = "compiled before on this machine" if warm else "first compile on this machine"
    if saving > cost:
        return (
            True,
            f"~{remaining_s:.0f} s of training left, ~{saving:.0f} s to save, ~{cost:.0f} s to compile ({state})",
        )
    return False, (
        f"~{remaining_s:.0f} s of training left saves ~{saving:.0f} s, less than the ~{cost:.0f} s compiling "
        f"takes ({state}); set train.compile: true to compile anyway"
    )


def marker_root() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "tuneforge"


class CacheMarker:
    """Remembers that this machine's inductor cache holds the compiled layers of one model shape and method.

    It lives inside inductor's cache folder, so clearing that cache (or a reboot emptying /tmp) forgets it too.
    """

    def __init__(self, model: nn.Module, method: dict, device: torch.device):
        layer = next(iter(decoder_layers(model)))
        key = {
            "torch": torch.__version__,
            "device": device.type,
            "layer": type(layer).__name__,
            "shapes": sorted((n, tuple(p.shape), str(p.dtype)) for n, p in layer.named_parameters()),
            "method": method,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
        self.path = marker_root() / digest

    @property
    def warm(self) -> bool:
        return self.path.is_file()

    def set(self) -> None:
        with contextlib.suppress(OSError):  # a read-only cache folder only costs the next decision
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()


class CompiledLayers:
    """The decoder layers' compiled callables, switched on only inside `active()`.

    The first layer stays eager: its input (the frozen embeddings' output) does not require grad, so compiling it
    adds a graph variant of its own — as much compile time as the other layers together, for one layer in many.
    """

    def __init__(self, model: nn.Module):
        self.layers = list(decoder_layers(model))[1:]
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
