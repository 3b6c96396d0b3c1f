"""LM head + cross-entropy in chunks, with the gradient computed on the way forward.

The naive path materialises logits for every target token (N x 49,152 floats for SmolLM2), keeps them for the
backward pass, and walks them again there: hundreds of MB and two passes over memory. Here the hidden states are
projected chunk by chunk; for each chunk the softmax gives the loss and, at once, the gradient of the loss with
respect to the hidden states (softmax - one-hot, times the head) — and, when the head is trained, its weight
gradient. Only those gradients are kept, so peak memory holds one chunk of logits, and backward is a
multiplication by the incoming scalar gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 256


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, tok_weights, softcap, compute_dtype, chunk):  # noqa: PLR0913
        n = hidden.shape[0]
        grad_h = torch.empty_like(hidden)
        grad_w = (
            torch.zeros_like(weight, dtype=torch.promote_types(torch.float32, compute_dtype))
            if weight.requires_grad
            else None
        )
        w = weight.to(compute_dtype)
        acc = torch.promote_types(torch.float32, compute_dtype)  # softmax in at least fp32
        loss = hidden.new_zeros((), dtype=acc)
        correct = hidden.new_zeros((), dtype=acc)
        # One bf16 and one fp32 chunk buffer serve every chunk: a fresh 25-50 MB tensor per chunk is page-faulted
        # in each time (a training process's heap is fragmented), which cost more than the softmax itself.
        rows = min(chunk, n)
        logits_buf = torch.empty(rows, w.shape[0], dtype=compute_dtype, device=hidden.device)
        acc_buf = logits_buf
        if acc != compute_dtype:
            acc_buf = torch.empty(logits_buf.shape, dtype=acc, device=hidden.device)
        for s in range(0, n, chunk):
            h = hidden[s : s + chunk].to(compute_dtype)
            t = targets[s : s + chunk]
            tw = tok_weights[s : s + chunk].to(acc)
            k = h.shape[0]
            logits = torch.mm(h, w.t(), out=logits_buf[:k])
            e = acc_buf[:k].copy_(logits) if acc_buf is not logits_buf else logits
            if softcap:
                capped = e.div_(softcap).tanh_().clone()
                e.mul_(softcap)
            # amax: max with indices is 4x slower; a target at the max counts as correct.
            m = e.amax(-1, keepdim=True)
            picked = e.gather(1, t[:, None])
            # softmax with one exp pass: exp(logits - max), its row sums give the log-sum-exp.
            total = e.sub_(m).exp_().sum(-1, keepdim=True)
            lse = total.log().add_(m)
            loss += ((lse - picked).squeeze(1) * tw).sum()
            correct += ((picked >= m).squeeze(1).to(acc) * tw).sum()
            # d(sum_i w_i * ce_i)/d logits = w_i * (softmax - onehot), computed in place.
            g = e.mul_(tw[:, None] / total)
            g[torch.arange(k, device=g.device), t] -= tw
            if softcap:
                g.mul_(1.0 - capped.square())
            if g is not logits:
                g = logits.copy_(g)  # the bf16 logits are spent: their buffer takes the gradient
            grad_h[s : s + chunk] = (g @ w).to(hidden.dtype)
            if grad_w is not None:
                grad_w += (g.t() @ h).to(grad_w.dtype)
        ctx.mark_non_differentiable(correct)
        ctx.save_for_backward(grad_h, grad_w if grad_w is not None else torch.empty(0))
        ctx.has_grad_w = grad_w is not None
        ctx.weight_dtype = weight.dtype
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, grad_correct):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype)
        gw = (grad_w * grad_loss).to(ctx.weight_dtype) if ctx.has_grad_w else None
        return gh, gw, None, None, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    tok_weights: torch.Tensor,
    softcap: float | None = None,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of weight x cross-entropy, weighted count of correct argmax) for hidden states (N, d) under head (V, d)."""
    if torch.is_autocast_enabled(hidden.device.type):
        compute_dtype = torch.get_autocast_dtype(hidden.device.type)
    else:
        compute_dtype = weight.dtype if weight.dtype != torch.float32 else hidden.dtype
    with torch.autocast(hidden.device.type, enabled=False):
        return _FusedLinearCE.apply(hidden, weight, targets, tok_weights, softcap, compute_dtype, chunk)


def reference_cross_entropy(hidden, weight, targets, tok_weights, softcap=None):
    """The plain computation, for tests."""
    logits = (hidden @ weight.t()).to(torch.promote_types(torch.float32, hidden.dtype))
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    ce = F.cross_entropy(logits, targets, reduction="none")
    return (ce * tok_weights).sum()
