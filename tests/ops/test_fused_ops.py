"""The hand-written RMSNorm and SwiGLU backward passes give transformers' gradients, and keep less for backward."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from tuneforge.ops.fused_ops import FusedOps


def _grads(module, x, fused: bool):
    x = x.detach().clone().requires_grad_()
    ctx = FusedOps(module).active() if fused else torch.autocast("cpu", enabled=False)
    with ctx:
        out = module(x)
    torch.manual_seed(1)
    out.backward(torch.randn_like(out))
    params = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return out.detach(), x.grad, params


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["norm", "mlp"])
def test_fused_matches_transformers(kind, dtype):
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=160, rms_norm_eps=1e-5)
    module = LlamaRMSNorm(64, eps=1e-5) if kind == "norm" else LlamaMLP(cfg)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    module = module.to(dtype)
    x = torch.randn(3, 7, 64, dtype=dtype) * 2
    ref, fused = _grads(module, x, fused=False), _grads(module, x, fused=True)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(fused[0], ref[0], **tol)
    torch.testing.assert_close(fused[1], ref[1], **tol)
    assert fused[2].keys() == ref[2].keys() and fused[2]
    for n in ref[2]:
        torch.testing.assert_close(fused[2][n], ref[2][n], **tol)
    assert "forward" not in vars(module)  # switched off again outside active()


def _saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_fused_keeps_less_for_backward():
    cfg = LlamaConfig(hidden_size=64, intermediate_size=160)
    norm, mlp = LlamaRMSNorm(64).to(torch.bfloat16), LlamaMLP(cfg).to(torch.bfloat16)
    for p in [*norm.parameters(), *mlp.parameters()]:
        p.requires_grad_(False)  # frozen, as under an adapter
    x = torch.randn(4, 32, 64, dtype=torch.bfloat16, requires_grad=True)
    saved = {}
    for module in (norm, mlp):
        plain = _saved_bytes(lambda m=module: m(x))
        with FusedOps(module).active():
            saved[type(module).__name__] = (_saved_bytes(lambda m=module: m(x)), plain)
    fused, plain = saved["LlamaRMSNorm"]
    assert fused < 0.75 * plain  # bf16 input + one fp32 scale per token, not an fp32 copy of the input
    fused, plain = saved["LlamaMLP"]
    assert plain - fused == 4 * 32 * 160 * 2  # the SiLU output (4 x 32 x 160 bf16) is recomputed, not kept


@pytest.mark.parametrize("block", [128, 4])  # one query block; blocks of 4, 4 and 3 rows
def test_fused_model_step_matches_sdpa_including_grouped_attention(block, monkeypatch):
    """A whole Llama (grouped-query attention, rotary, norms, MLP): the fused step's loss and gradients are SDPA's."""
    from transformers import LlamaForCausalLM

    from tuneforge.ops import fused_ops

    monkeypatch.setattr(fused_ops, "ATTENTION_BLOCK", block)

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 97, (3, 11))

    def run(fused: bool):
        model.zero_grad(set_to_none=True)
        ops = FusedOps(model)
        with ops.active() if fused else torch.autocast("cpu", enabled=False):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, ops

    ref_loss, ref_grads, _ = run(False)
    loss, grads, ops = run(True)
    assert ops.configs and model.config._attn_implementation == "sdpa"  # swapped in for the step only
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for n, g in ref_grads.items():
        torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=1e-5, msg=n)


def test_fused_attention_defers_to_sdpa_for_masks_and_dropout():
    from tuneforge.ops import fused_ops

    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    masked = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    out, _ = fused_ops.causal_attention(torch.nn.Module(), q, k, v, masked.logical_not())
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # full, unmasked
    torch.testing.assert_close(out, ref)


def _lora_llama(dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attn_implementation="sdpa",
    )  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear")
    model = get_peft_model(LlamaForCausalLM(cfg), lora)
    # B starts at zero: give it values so every gradient path is exercised
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    return model


def _loss_and_lora_grads(model, ids, fused: bool, autocast: bool):
    model.zero_grad(set_to_none=True)
    with FusedOps(model).active() if fused else contextlib.nullcontext():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_lora_linear_matches_peft(autocast, monkeypatch):
    from tuneforge.ops import fused_ops

    taken = []
    plain = fused_ops._plain_lora
    monkeypatch.setattr(fused_ops, "_plain_lora", lambda m: taken.append(plain(m)) or taken[-1])
    model = _lora_llama()
    ids = torch.randint(0, 97, (3, 11))
    ref_loss, ref = _loss_and_lora_grads(model, ids, fused=False, autocast=autocast)
    loss, got = _loss_and_lora_grads(model, ids, fused=True, autocast=autocast)
    assert len(taken) == 14 and all(t is not None for t in taken)  # every projection ran the fused node
    assert len(ref) == 2 * 7 * 2  # A and B of seven projections in two layers
    tol = {"rtol": 2e-2, "atol": 2e-3} if autocast else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(loss, ref_loss, **tol)
    for n, g in ref.items():
        torch.testing.assert_close(got[n], g, **tol, msg=n)


def test_fused_lora_keeps_peft_for_dropout_and_disabled_adapters():
    from tuneforge.ops import fused_ops

    model = _lora_llama(dropout=0.1)
    proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert fused_ops._plain_lora(proj) is None  # dropout: peft's forward
    model = _lora_llama()
    proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert fused_ops._plain_lora(proj) is not None
    with model.disable_adapter():  # DPO's reference pass: the base model alone
        assert fused_ops._plain_lora(proj) is None
        ids = torch.randint(0, 97, (2, 7))
        with FusedOps(model).active():
            out = model(input_ids=ids).logits
        base = model.base_model.model(input_ids=ids).logits
    torch.testing.assert_close(out, base)


def test_fused_attention_with_fp32_queries_and_bf16_values():
    """Full fine-tuning under autocast: rotary embeddings leave q and k in fp32, v stays bf16."""
    from tuneforge.ops import fused_ops

    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 9, 8, requires_grad=True), torch.randn(1, 2, 9, 8, requires_grad=True)
    v = torch.randn(1, 2, 9, 8, dtype=torch.bfloat16, requires_grad=True)
    out, _ = fused_ops.causal_attention(torch.nn.Module(), q, k, v, None)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert q.grad.dtype == k.grad.dtype == torch.float32 and v.grad.dtype == torch.bfloat16
