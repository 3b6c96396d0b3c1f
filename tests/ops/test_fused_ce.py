"""The chunked LM head + cross-entropy equals the plain computation, in value and in gradients."""

import pytest
import torch

from tuneforge.ops.fused_ce import fused_linear_cross_entropy, reference_cross_entropy


@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("train_head", [False, True])
def test_matches_reference_value_and_gradients(softcap, train_head):
    torch.manual_seed(0)
    n, d, v = 37, 16, 101
    h = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, d, dtype=torch.float64, requires_grad=train_head)
    t = torch.randint(0, v, (n,))
    tw = torch.rand(n, dtype=torch.float64)
    loss, correct = fused_linear_cross_entropy(h, w, t, tw, softcap, chunk=8)
    (loss * 0.5).backward()
    gh, gw = h.grad.clone(), (w.grad.clone() if train_head else None)
    h.grad = None
    if train_head:
        w.grad = None
    ref = reference_cross_entropy(h, w, t, tw, softcap)
    (ref * 0.5).backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9)
    assert torch.allclose(gh, h.grad, atol=1e-10)
    if train_head:
        assert torch.allclose(gw, w.grad, atol=1e-10)
    logits = h.detach() @ w.detach().t()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    assert correct.item() == pytest.approx(((logits.argmax(-1) == t).double() * tw).sum().item())


def test_under_bf16_autocast_it_stays_close_to_fp32():
    torch.manual_seed(0)
    h = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(500, 32) * 0.1
    t = torch.randint(0, 500, (64,))
    tw = torch.ones(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = fused_linear_cross_entropy(h, w, t, tw)
    ref = reference_cross_entropy(h, w, t, tw)
    assert loss.item() == pytest.approx(ref.item(), rel=2e-2)
    loss.backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()
