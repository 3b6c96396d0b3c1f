"""What a training process sets up before its first step: seeds, the precision and the accelerator, the CPU's
memory allocator and oneDNN, and the dtypes of frozen weights under mixed precision.

Process-wide settings live here, imported by the training loop (train/loop.py), so that they apply to training
processes only.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from accelerate import Accelerator

from tuneforge.models.load import cpu_has_fast_bf16

# oneDNN (PyTorch's CPU bf16 matmuls) caches a compiled primitive per matmul shape, 1024 by default. Training sees a
# new shape for nearly every sequence length, so the cache keeps growing resident memory; 128 entries keep the
# speed with much less memory (measured in bench/README.md). Set when the training loop is imported, so that it
# applies to training processes only and before oneDNN first runs (it reads the variable once); set it in the
# environment to override.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")

# glibc serves blocks of 32 MB and more (its dynamic ceiling) with a fresh mmap and unmaps them on free, and trims
# the heap's freed top beyond twice the threshold. A training step allocates and frees such blocks all the time
# (LM-head chunks, attention scores, activations), and a fresh block is page-faulted in, 4 KB at a time, several
# times slower than a copy into reused memory. Training on CPU keeps blocks up to 64 MB in the heap and the heap's
# top up to 128 MB: about half the page faults and a faster step for a slightly higher peak (bench/README.md).
# Process-wide, set once the training process knows it runs on CPU.
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 128 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
_USER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}


def keep_freed_memory() -> bool:
    """Apply the malloc settings above (glibc only; left alone when the environment sets glibc.malloc tunables)."""
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or _USER_MALLOC_ENV & set(os.environ):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Accelerate's mixed_precision value: "bf16" where it pays (GPUs with bf16, CPUs with AVX512-BF16/AMX)."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_fast_bf16() else "no"
    return {"fp32": "no", "bf16-mixed": "bf16", "fp16-mixed": "fp16"}[precision]


def new_accelerator(precision: str, cpu: bool) -> Accelerator:
    """An Accelerator for this run. accelerate keeps its state per process, so a second run in the same
    process (the API, a worker, a sweep) with another precision would be refused; start from a clean state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=precision, cpu=cpu)


def frozen_to_bf16(model: torch.nn.Module) -> int:
    """Keep every frozen parameter in bf16 when adapters train under bf16 autocast: half the weight memory, no
    fp32 -> bf16 copy of every weight at every step, and — with the embeddings and norms in bf16 too — a bf16
    residual stream. Each projection's input is then one bf16 tensor that its base layer and its adapter share
    (an fp32 stream is cast to bf16 once per consumer, and each adapter keeps its own copy for backward): faster
    and a lower peak at the same held-out loss (bench/README.md). The trained parameters (adapters, and their
    optimizer state) stay fp32. Returns the number of parameters converted."""
    n = 0
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32:
            p.data = p.data.to(torch.bfloat16)
            n += p.numel()
    adapter_input_casts(model, False)  # peft would cast the bf16 input to the adapter's fp32 first
    # The weights were memory-mapped from one safetensors file; the fp32 pages read for the conversion stay
    # resident while any tensor still points into that mapping. Copying the few that do (embeddings, norms)
    # releases it for the whole run.
    for t in [*model.parameters(), *model.buffers()]:
        if t.dtype != torch.bfloat16 and not t.requires_grad:
            t.data = t.data.clone()
    return n


def adapter_input_casts(model: torch.nn.Module, enabled: bool) -> None:
    """peft casts each adapter's input to the adapter's dtype; frozen_to_bf16 switches that off for training under
    bf16 autocast. A trained model evaluated outside autocast (a GPU, or a CPU without fast bf16 trained with
    train.precision bf16-mixed) needs it back on, or a bf16 input meets the fp32 adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            m.cast_input_dtype_enabled = enabled
