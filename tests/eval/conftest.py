"""What the evaluation tests share: a tiny model whose weights make greedy decoding vary, and inference pinned
to fp32."""

from __future__ import annotations

import pytest
import torch


def scramble(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Redraw every weight matrix (norms keep their ones) so that greedy decoding produces varied tokens: the tiny
    model's own initialisation repeats one token forever, and every comparison of answers would pass trivially."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module", autouse=True)
def _fp32_inference():
    # On CPUs with fast bf16, evaluation and generation run under bf16 autocast; the exact comparisons with hand
    # computations here are about padding, caching and bookkeeping, not bf16 rounding, so pin inference to fp32.
    # Module scope: module-scoped fixtures (a whole comparison run once per module) are built before any
    # function-scoped one, so a per-test pin came too late for them — and their answers were bf16 ones on such CPUs.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tuneforge.models.load.autocast_inference", lambda device: False)
        yield
