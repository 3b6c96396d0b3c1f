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

LoRA: peft's Linear computes base(x) + B(A(x)) * scaling as separate autograd nodes, under autocast each with its
own weight casts, and walks the output twice more (scale, add) on the way forward and the output gradient once
more on the way back. `_LoRALinear` does it in one node: the scaled B product is accumulated into the base output
by the matmul itself (addmm), and backward forms the input gradient as dy W + (dy B s) A in two accumulating
matmuls. Anything but plain single-adapter LoRA without dropout (DoRA, several adapters, adapters switched off for
DPO's reference, merged weights, quantized bases) keeps peft's forward.
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
ATTENTION_BLOCK = 128  # query rows per block (64-192 measured alike on SmolLM2; 128 the steadiest)


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
    """softmax(Q K^T * scale + causal mask) V for q (B, H, T, d) and k, v (B, H/G, T, d); returns (B, T, H, d).

    Queries go in blocks of ATTENTION_BLOCK rows, each against the keys up to its own last row: the part of the
    T x T scores above the diagonal is never computed (about 5/8 of the full work at T = 512), and each block's
    scores stay cache-sized. The G query heads sharing a key/value head are stacked into one matrix per block.
    """

    @staticmethod
    def _scores(qb, k, start, n, scale):
        """Scaled, causally masked fp32 scores (B, Hkv, G, n, start+n) of query rows start..start+n of the G
        stacked heads (qb: B, Hkv, G*n, d) against keys ..start+n."""
        b, hkv = qb.shape[:2]
        end = start + n
        s = torch.matmul(qb, k[:, :, :end].transpose(-1, -2)).float().mul_(scale)
        s = s.view(b, hkv, -1, n, end)
        s[..., start:].masked_fill_(
            torch.ones(n, n, dtype=torch.bool, device=s.device).triu(1), float("-inf")
        )
        return s

    @staticmethod
    def forward(ctx, q, k, v, scale):
        b, h, t, d = q.shape
        hkv = k.shape[1]
        g = h // hkv
        q5 = q.view(b, hkv, g, t, d)
        # in v's dtype: rotary embeddings can leave q and k in fp32 when v is bf16 (full fine-tuning under autocast)
        out = torch.empty(q5.shape, dtype=v.dtype, device=v.device)
        lse = torch.empty(b, hkv, g, t, 1, dtype=torch.float32, device=q.device)
        for start in range(0, t, ATTENTION_BLOCK):
            end = min(start + ATTENTION_BLOCK, t)
            qb = q5[:, :, :, start:end].reshape(b, hkv, -1, d)
            s = _CausalAttention._scores(qb, k, start, end - start, scale)
            m = s.amax(-1, keepdim=True)
            p = s.sub_(m).exp_()
            total = p.sum(-1, keepdim=True)
            lse[:, :, :, start:end] = total.log().add_(m)
            p = p.div_(total).to(v.dtype).view(b, hkv, -1, end)
            out[:, :, :, start:end] = torch.matmul(p, v[:, :, :end]).view(b, hkv, g, -1, d)
        ctx.save_for_backward(q5, k, v, out, lse)
        ctx.scale = scale
        return out.view(b, h, t, d).transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad):
        q5, k, v, out, lse = ctx.saved_tensors
        b, hkv, g, t, d = q5.shape
        do5 = grad.transpose(1, 2).reshape(q5.shape)
        delta = (do5.float() * out.float()).sum(-1, keepdim=True)
        dq = torch.empty_like(q5)
        # dk and dv sum over query blocks: kept in fp32
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        for start in range(0, t, ATTENTION_BLOCK):
            end = min(start + ATTENTION_BLOCK, t)
            n = end - start
            qb = q5[:, :, :, start:end].reshape(b, hkv, g * n, d)
            dob = do5[:, :, :, start:end].reshape(b, hkv, g * n, d)
            s = _CausalAttention._scores(qb, k, start, n, ctx.scale)
            p = s.sub_(lse[:, :, :, start:end]).exp_()
            dv[:, :, :end] += torch.matmul(p.to(v.dtype).view(b, hkv, g * n, end).transpose(-1, -2), dob)
            dp = torch.matmul(dob, v[:, :, :end].transpose(-1, -2)).float().view(p.shape)
            ds = (
                p.mul_(dp.sub_(delta[:, :, :, start:end]))
                .mul_(ctx.scale)
                .to(q5.dtype)
                .view(b, hkv, g * n, end)
            )
            dq[:, :, :, start:end] = torch.matmul(ds, k[:, :, :end]).view(b, hkv, g, n, d)
            dk[:, :, :end] += torch.matmul(ds.transpose(-1, -2), qb)
        return dq.view(b, hkv * g, t, d), dk.to(k.dtype), dv.to(v.dtype), None


class _LoRALinear(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T in `dtype`; gradients for whichever of x, W, b, A, B need them."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, dtype):  # noqa: PLR0913
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        w, a, b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
        xa = x2 @ a.t()
        y = x2 @ w.t() if bias is None else torch.addmm(bias.to(dtype), x2, w.t())
        y.addmm_(xa, b.t(), alpha=scaling)
        ctx.save_for_backward(x2, xa, w, a, b)
        ctx.scaling = scaling
        ctx.dtypes = (x.dtype, weight.dtype, lora_a.dtype, lora_b.dtype)
        return y.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, xa, w, a, b = ctx.saved_tensors
        x_dtype, w_dtype, a_dtype, b_dtype = ctx.dtypes
        need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        dy = grad.reshape(-1, w.shape[0]).to(w.dtype)
        dyb = (dy @ b).mul_(ctx.scaling)  # (tokens, r): the scale applied on the narrow side
        dx = dw = dbias = da = db = None
        if need_x:
            dx = (dy @ w).addmm_(dyb, a).view(*grad.shape[:-1], w.shape[1]).to(x_dtype)
        if need_w:
            dw = (dy.t() @ x2).to(w_dtype)
        if need_bias:
            dbias = dy.sum(0).to(w_dtype)
        if need_a:
            da = (dyb.t() @ x2).to(a_dtype)
        if need_b:
            db = (dy.t() @ xa).mul_(ctx.scaling).to(b_dtype)
        return dx, dw, dbias, da, db, None, None


def _plain_lora(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(A, B, scaling) when `module` is a peft LoRA Linear that runs exactly one plain adapter right now."""
    if module.disable_adapters or module.merged or type(module.base_layer) is not nn.Linear:
        return None
    names = module.active_adapters
    if len(names) != 1 or names[0] not in module.lora_A or names[0] in module.lora_variant:
        return None
    name = names[0]
    if not isinstance(module.lora_dropout[name], nn.Identity) or module.lora_B[name].bias is not None:
        return None
    return module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name]


def lora_linear(module: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    plan = None if args or kwargs else _plain_lora(module)
    if plan is None:
        return type(module).forward(module, x, *args, **kwargs)
    base = module.base_layer
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else base.weight.dtype
    with torch.autocast(dev, enabled=False):
        return _LoRALinear.apply(x, base.weight, base.bias, *plan, dtype)


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
    from peft.tuners.lora.layer import Linear as LoraLinear  # the class itself: subclasses (bnb, ...) differ

    out = []
    for m in model.modules():
        name = type(m).__name__
        if type(m) is LoraLinear:
            out.append((m, functools.partial(lora_linear, m)))
        elif name in RMSNORM_CLASSES and hasattr(m, "variance_epsilon"):
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
