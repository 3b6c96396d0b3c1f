"""RMSNorm and SwiGLU with hand-written backward passes, for eager (uncompiled) training steps.

transformers' Llama-family RMSNorm upcasts its input to fp32 and autograd keeps that fp32 copy for the backward
pass; its MLP keeps the gate projection, its SiLU and the up projection. These versions keep the bf16 input and
one fp32 scale per token (RMSNorm), and the gate and up projections only (SwiGLU, the SiLU is recomputed): fewer
and smaller saved activations for every layer of the step, with the same gradients. `torch.compile` makes the
same savings by itself, so the compiled path leaves the modules as they are.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

# transformers' classes whose forward is exactly the one re-implemented below (Gemma's norm scales by 1 + weight
# and is left alone).
RMSNORM_CLASSES = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
MLP_CLASSES = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        xhat = x.float() * rstd
        gxhat = (grad * weight).float()
        gx = rstd * (gxhat - xhat * (gxhat * xhat).mean(-1, keepdim=True))
        gw = None
        if ctx.needs_input_grad[1]:
            gw = (grad * xhat.to(x.dtype)).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
        return gx.to(x.dtype), gw, None


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        d_gate = torch.ops.aten.silu_backward(grad * up, gate)
        d_up = grad * F.silu(gate)
        return d_gate, d_up


def rms_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _RMSNorm.apply(x, module.weight, module.variance_epsilon)


def swiglu_mlp(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module.down_proj(_SwiGLU.apply(module.gate_proj(x), module.up_proj(x)))


def fusable(model: nn.Module) -> list[tuple[nn.Module, functools.partial]]:
    """The modules of `model` these kernels replace exactly, each with its replacement forward."""
    out = []
    for m in model.modules():
        name = type(m).__name__
        if name in RMSNORM_CLASSES and hasattr(m, "variance_epsilon"):
            out.append((m, functools.partial(rms_norm, m)))
        elif name in MLP_CLASSES and type(getattr(m, "act_fn", None)).__name__ in ("SiLU", "SiLUActivation"):
            out.append((m, functools.partial(swiglu_mlp, m)))
    return out


class FusedOps:
    """Switches the replacements on for the modules of one model, only inside `active()`."""

    def __init__(self, model: nn.Module):
        self.targets = fusable(model)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        for m, fn in self.targets:
            m.forward = fn
        try:
            yield
        finally:
            for m, _ in self.targets:
                del m.forward
