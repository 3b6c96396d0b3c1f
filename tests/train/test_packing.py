"""Packing and maskless padding change speed, never the loss: the same examples give the same loss either way."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuneforge.data.collate import collate
from tuneforge.data.pack import pack, pack_bins
from tuneforge.data.tokenize import Tokenized
from tuneforge.ops.lm_loss import weighted_lm_loss


def _seqs(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        length = 6 + 3 * k
        ids = torch.randint(10, 1000, (length,), generator=g).tolist()
        w = [0.0] * 3 + [1.0] * (length - 3)  # a prompt of 3 tokens, then the answer
        out.append(Tokenized(ids, w, index=k))
    return out


def test_best_fit_decreasing_fills_rows_without_splitting_examples():
    rows = pack_bins([9, 7, 5, 4, 3, 2], capacity=10)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum([9, 7, 5, 4, 3, 2][i] for i in r) <= 10 for r in rows)
    assert len(rows) == 4  # [9] stands alone (nothing of length 1), then 7+3, 5+4, 2: the optimum


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_loss_equals_unpacked_loss(tiny_model_dir, attn):
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float64, attn_implementation=attn
    )
    seqs = _seqs()
    unpacked = weighted_lm_loss(model, collate(seqs, pad_id=0))
    rows = pack(seqs, capacity=64)
    assert len(rows) < len(seqs)
    packed = weighted_lm_loss(model, collate(rows, pad_id=0))
    assert packed.weight_sum == unpacked.weight_sum
    assert packed.loss_sum.item() == pytest.approx(unpacked.loss_sum.item(), rel=1e-9)


def test_right_padding_needs_no_mask(tiny_model_dir):
    """Each sequence alone gives the same loss as inside a right-padded batch without an attention mask."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    seqs = _seqs()
    alone = sum(weighted_lm_loss(model, collate([s], pad_id=0)).loss_sum.item() for s in seqs)
    batched = weighted_lm_loss(model, collate(seqs, pad_id=0)).loss_sum.item()
    assert batched == pytest.approx(alone, rel=1e-9)
