"""RMSNorm, SwiGLU and causal attention with hand-written backward passes, for eager (uncompiled) training steps.

transformers' Llama-family RMSNorm upcasts its input to fp32 and autograd keeps that fp32 copy for the backward
pass; its MLP keeps the gate projection, its SiLU and the up projection. These versions keep the bf16 input and
one fp32 scale per token (RMSNorm), and the gate and up projections only (SwiGLU, the SiLU is recomputed): fewer
and smaller saved activations for every layer of the step, with the same gradients. `torch.compile` makes the
same savings by itself, so the compiled path leaves the modules as they are.

Attention: PyTorch's CPU flash-attention backward took a quarter of a SmolLM2 LoRA step (profiled, bench/README.md)
for 4% of its FLOPs. `_CausalAttention` computes the same thing with batched matmuls — the grouped query heads
of one key/value head as one matrix, no repeated K/V — and, like flash attention, keeps only Q, K, V, the output
and one log-sum-exp per query for backward, where it recomputes the probabilities: the T x T matrices live one
layer at a time. It serves unmasked causal self-attention (maskless right-padded batches, CPU); anything else
(packing's block-diagonal masks, a KV cache, dropout) goes to SDPA as before.
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
ATTENTION = "tuneforge_causal"  # the name it is registered under with transformers, used during the step only


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


class _CausalAttention(torch.autograd.Function):
    """softmax(Q K^T * scale + causal mask) V for q (B, H, T, d) and k, v (B, H/G, T, d); returns (B, T, H, d)."""

    @staticmethod
    def _probs(qg, k, scale, lse=None):
        t = k.shape[2]
        s = (
            torch.matmul(qg, k.transpose(-1, -2)).float() * scale
        )  # (B, Hkv, G*T, T): the G query heads stacked
        mask = torch.ones(t, t, dtype=torch.bool, device=s.device).triu(1).repeat(qg.shape[2] // t, 1)
        s.masked_fill_(mask, float("-inf"))
        if lse is None:
            lse = torch.logsumexp(s, -1, keepdim=True)
        return s.sub_(lse).exp_(), lse

    @staticmethod
    def forward(ctx, q, k, v, scale):
        b, h, t, d = q.shape
        qg = q.reshape(b, k.shape[1], -1, d)
        p, lse = _CausalAttention._probs(qg, k, scale)
        out = torch.matmul(p.to(v.dtype), v)
        ctx.save_for_backward(qg, k, v, out, lse)
        ctx.scale = scale
        return out.view(b, h, t, d).transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad):
        qg, k, v, out, lse = ctx.saved_tensors
        b, t, h, d = grad.shape
        dog = grad.transpose(1, 2).reshape(out.shape)
        p, _ = _CausalAttention._probs(qg, k, ctx.scale, lse)
        dv = torch.matmul(p.to(v.dtype).transpose(-1, -2), dog)
        dp = torch.matmul(dog, v.transpose(-1, -2)).float()
        delta = (dog.float() * out.float()).sum(-1, keepdim=True)
        ds = p.mul_(dp.sub_(delta)).mul_(ctx.scale).to(qg.dtype)
        dq = torch.matmul(ds, k).view(b, h, t, d)
        dk = torch.matmul(ds.transpose(-1, -2), qg)
        return dq, dk, dv, None


def causal_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention interface: `_CausalAttention` where it applies, SDPA otherwise."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = (
        attention_mask is None
        and not dropout
        and kwargs.get("softcap") is None
        and kwargs.get("position_bias") is None
        and query.shape[2] == key.shape[2] > 1
        and query.device.type == "cpu"
        and getattr(module, "is_causal", True)
    )
    if not plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return _CausalAttention.apply(query, key, value, scale), None


def _register_attention() -> None:
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(ATTENTION, causal_attention)
    # The masks SDPA gets: none for a plain causal batch.
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


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
        # The attention swap: configs of models that run SDPA (eager attention was asked for by name: left alone).
        self.configs = [
            c
            for c in {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values()
            if getattr(c, "_attn_implementation", None) == "sdpa"
        ]
        if self.configs:
            _register_attention()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        for m, fn in self.targets:
            m.forward = fn
        for c in self.configs:
            c._attn_implementation = ATTENTION
        try:
            yield
        finally:
            for m, _ in self.targets:
                del m.forward
            for c in self.configs:
                c._attn_implementation = "sdpa"
