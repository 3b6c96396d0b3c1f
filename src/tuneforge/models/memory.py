"""Predict a run's peak memory and time per epoch before training, by probing the real model.

Analytic formulas for activation memory go wrong with every new kernel, dtype policy or adapter type. Instead the
estimate runs the training objective itself on a few short synthetic sequences under
`torch.autograd.graph.saved_tensors_hooks`, counts the bytes autograd keeps for the backward pass, and fits
bytes = a + B*(b*T + c*T^2) over sequence lengths T (the T^2 term is the eager attention matrix). The run's own
batch plan then gives the largest micro-batch, and that decides the peak:

    peak = memory in use now (runtime, weights, data)
         + gradients and optimizer state of the trained parameters (created at the first step)
         + activations saved by the largest micro-batch + one layer's worth of backward buffers
         + the LM-head chunk of the fused cross-entropy

Time per epoch comes from timing a few real training micro-batches (forward + backward) of typical size.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneforge.ops.fused_ce import CHUNK

# Peak of one forward + backward above the memory in use before it, as a multiple of the saved activations
# (VmHWM measured on SmolLM2 at 128-1024 tokens per micro-batch: 1.8-1.9; see bench/README.md).
BACKWARD_WORKING_SET = 0.85


@dataclass
class Estimate:
    peak_bytes: int
    parts: dict[str, int]
    available_bytes: int | None
    device: str
    seconds_per_epoch: float | None = None
    tokens_per_epoch: int = 0
    tokens_per_second: float | None = None
    largest_micro_batch_tokens: int = 0
    suggestions: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return (
            self.available_bytes is None
            or self.peak_bytes - self.parts.get("in use now", 0) <= self.available_bytes
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "peak_bytes": self.peak_bytes,
            "parts": self.parts,
            "available_bytes": self.available_bytes,
            "device": self.device,
            "fits": self.fits,
            "seconds_per_epoch": self.seconds_per_epoch,
            "tokens_per_epoch": self.tokens_per_epoch,
            "tokens_per_second": self.tokens_per_second,
            "largest_micro_batch_tokens": self.largest_micro_batch_tokens,
            "suggestions": self.suggestions,
        }


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


# --------------------------------------------------------------------------------------------- measurements
def memory_in_use(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:  # current RSS (ru_maxrss would be the peak so far)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_available(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def saved_activation_bytes(model: nn.Module, run: Callable[[], Any]) -> int:
    """Bytes of the tensors autograd saves for backward while `run()` executes, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(seen.values())


def _synthetic_batch(vocab: int, rows: int, length: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(10, max(11, vocab - 1), (rows, length), generator=g)
    w = torch.ones(rows, length)
    w[:, : length // 2] = 0  # half prompt, half answer: like typical chat data
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "weights": w.to(device),
    }


@dataclass
class ActivationModel:
    const: float  # bytes independent of tokens (casted weight copies ...)
    per_token: float
    per_token_sq: float  # per row per T^2

    def bytes_for(self, rows: int, length: int) -> float:
        return self.const + rows * (self.per_token * length + self.per_token_sq * length * length)


def probe_activations(
    model: nn.Module,
    loss_fn: Callable,
    autocast: Callable,
    vocab: int,
    device: torch.device,
    lengths: Sequence[int] = (32, 64, 128),
) -> ActivationModel:
    """Fit saved-activation bytes = a + b*T + c*T^2 from three probe lengths (one row each)."""
    ys = []
    for t in lengths:
        batch = _synthetic_batch(vocab, 1, t, device)

        def run(batch=batch):
            with autocast():
                return loss_fn(model, batch).loss_sum

        ys.append(saved_activation_bytes(model, run))
    (t1, t2, t3), (y1, y2, y3) = lengths, ys
    # Solve the 3x3 system for (a, b, c).
    m = torch.tensor([[1.0, t1, t1 * t1], [1.0, t2, t2 * t2], [1.0, t3, t3 * t3]], dtype=torch.float64)
    a, b, c = torch.linalg.solve(m, torch.tensor([y1, y2, y3], dtype=torch.float64)).tolist()
    return ActivationModel(max(a, 0.0), max(b, 0.0), max(c, 0.0))


def fit_step_time(samples: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares fit seconds = overhead + per_token * padded_tokens over timed steps."""
    n = len(samples)
    if n == 1 or len({t for t, _ in samples}) == 1:
        t, sec = samples[0]
        return 0.0, sec / max(t, 1)
    mx = sum(t for t, _ in samples) / n
    my = sum(sec for _, sec in samples) / n
    var = sum((t - mx) ** 2 for t, _ in samples)
    b = sum((t - mx) * (sec - my) for t, sec in samples) / var
    a = my - b * mx
    if a < 0 or b <= 0:  # noise: fall back to a pure rate
        return 0.0, my / mx
    return a, b


# -------------------------------------------------------------------------------------------------- estimate
def estimate(
    model: nn.Module,
    *,
    loss_fn: Callable,
    autocast: Callable,
    device: torch.device,
    vocab: int,
    hidden: int,
    layers: int,
    micro_batch_shapes: Sequence[tuple[int, int]],  # (rows, padded length) of every micro-batch of an epoch
    max_target_tokens: int,  # most loss-carrying tokens in one micro-batch (sizes the LM-head chunk)
    optimizer: str,
    gradient_checkpointing: bool = False,
) -> Estimate:
    """Predict the peak memory of training `model` as prepared (time is added by the caller, which can run steps)."""
    model.train()  # dropout masks are saved activations too
    now = memory_in_use(device)
    peak_so_far = peak_memory(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # Gradients (fp32) + optimizer state: AdamW keeps two moments, SGD with momentum one.
    state_per_param = 4 + (8 if optimizer == "adamw" else 4)
    act = probe_activations(model, loss_fn, autocast, vocab, device)
    rows, length = max(micro_batch_shapes, key=lambda s: act.bytes_for(*s)) if micro_batch_shapes else (1, 1)
    tokens = rows * length
    activations = act.bytes_for(rows, length)
    if gradient_checkpointing:
        # Only each layer's input is kept; one layer is recomputed at a time.
        activations = act.const + tokens * hidden * 4 * layers + act.bytes_for(rows, length) / max(layers, 1)
    # While backward runs, the gradients of the activations (fp32, as large as what each op saved) and the
    # allocator's freed-but-held blocks sit next to what is still saved: measured on SmolLM2 with VmHWM, one
    # step's peak is 1.8-1.9x its saved activations at 128-1024 tokens (bench/README.md).
    # With checkpointing only one layer's activations exist at a time during backward.
    working = BACKWARD_WORKING_SET * (act.bytes_for(rows, length) - act.const)
    if gradient_checkpointing:
        working /= max(layers, 1)
    ce_chunk = (
        min(CHUNK, max_target_tokens) * vocab * 8
    )  # fp32 logits chunk + low-precision copies, transient
    parts = {
        "in use now": now,
        "gradients + optimizer state": trainable * state_per_param,
        "activations (largest micro-batch)": int(activations),
        "backward working set": int(working),
        "LM head chunk": int(ce_chunk),
    }
    if device.type == "cpu":
        # glibc keeps freed blocks of differently sized micro-batches: over a run on SmolLM2 the resident set
        # grew by about one micro-batch of saved activations above the first step's (bench/README.md).
        parts["allocator slack"] = int(activations - act.const)
    # Loading the weights can peak above training (a file read next to its tensors); the run will see it too.
    peak = max(int(sum(parts.values())), peak_so_far)
    est = Estimate(peak, parts, memory_available(device), device.type, largest_micro_batch_tokens=tokens)
    est.tokens_per_epoch = sum(r * t for r, t in micro_batch_shapes)
    est.suggestions = suggestions(est, act, rows, length, hidden, layers, trainable, gradient_checkpointing)
    return est


def sharded(
    est: Estimate, model: nn.Module, layers: Sequence[nn.Module], ranks: int, micro_batches: int
) -> tuple[Estimate, int]:
    """`est` (one data-parallel rank holding the whole model) as one rank of FSDP over `ranks`, and the bytes
    that rank receives and sends per optimizer step of `micro_batches` micro-batches. It keeps 1/N of the
    weights, gradients and optimizer state, and holds whole at a time the root unit (embeddings, final norm,
    head: kept between forward and backward) and two blocks (the one computing and the next, being gathered).
    Each micro-batch gathers every block twice (forward, then again for backward) and the root once, and
    reduce-scatters the fp32 gradients of what trains."""
    seen: set[int] = set()

    def size(mod: nn.Module) -> int:
        n = 0
        for p in mod.parameters():
            if id(p) not in seen:  # a tied weight counts once
                seen.add(id(p))
                n += p.numel() * p.element_size()
        return n

    block = max((size(layer) for layer in layers), default=0)
    blocks = block * len(layers)  # (the blocks are alike)
    whole = blocks + size(model)  # what is left after the blocks is the root unit
    root = whole - blocks
    part = 1 / ranks
    parts = dict(est.parts)
    parts["in use now"] = max(0, int(parts["in use now"] - whole * (1 - part)))
    parts["gradients + optimizer state"] = int(parts["gradients + optimizer state"] * part)
    parts["weights gathered for compute"] = int((root + 2 * block) * (1 - part))
    peak = int(sum(parts.values()))
    out = Estimate(
        peak,
        parts,
        est.available_bytes,
        est.device,
        tokens_per_epoch=est.tokens_per_epoch,
        largest_micro_batch_tokens=est.largest_micro_batch_tokens,
        suggestions=est.suggestions,
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    traffic = micro_batches * (2 * blocks + root + 4 * trainable) * (1 - part)
    return out, int(traffic)


def suggestions(
    est: Estimate,
    act: ActivationModel,
    rows: int,
    length: int,
    hidden: int,
    layers: int,
    trainable: int,
    checkpointing: bool,
) -> list[str]:
    """Concrete changes with the peak each would give."""
    scaled = ("activations (largest micro-batch)", "backward working set", "allocator slack")
    base = est.peak_bytes - sum(est.parts.get(k, 0) for k in scaled)
    # activations, their backward working set and (on CPU) the allocator's slack all scale with the micro-batch
    per_act = 1 + BACKWARD_WORKING_SET + ("allocator slack" in est.parts)
    out = []
    if rows > 1:
        half = max(1, rows // 2)
        a = act.bytes_for(half, length)
        out.append(f"train.micro_batch_tokens={half * length} (same updates, ~{gib(base + a * per_act)})")
        out.append(f"train.batch_size={half} (~{gib(base + a * per_act)})")
    if not checkpointing:
        a = (
            act.const
            + rows * length * hidden * 4 * layers
            + act.bytes_for(rows, length) * BACKWARD_WORKING_SET / layers
        )
        out.append(f"train.gradient_checkpointing=true (~{gib(base + a)}, about 30% slower)")
    if trainable > 0.2 * (est.parts["in use now"] / 4):
        out.append("method lora (trains <5% of the weights: far less optimizer state)")
    return out


def explain(est: Estimate) -> str:
    lines = [f"predicted peak memory: {gib(est.peak_bytes)} on {est.device}"]
    for k, v in est.parts.items():
        lines.append(f"  {k:<36} {gib(v)}")
    if est.available_bytes is not None:
        lines.append(
            f"available now: {gib(est.available_bytes + est.parts['in use now'])} "
            f"({'fits' if est.fits else 'does NOT fit'})"
        )
    if est.seconds_per_epoch is not None:
        lines.append(
            f"time per epoch: {est.seconds_per_epoch:.0f} s ({est.tokens_per_epoch:,} padded tokens at "
            f"{est.tokens_per_second:.0f} tokens/s)"
        )
    return "\n".join(lines)
