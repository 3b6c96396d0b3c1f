"""KV caches of the batched engine: one per running sequence, sized at admission, inside a fixed token budget.

A sequence's need is known when it is admitted (prompt + max_tokens), so its cache is allocated once at that
size and never grows or moves: no paging, no copies while decoding. The budget (`kv_cache_mb`, in tokens of
this model) bounds the memory of all caches together; a sequence waits in the scheduler's queue until its
tokens fit, and the request queue in front of it answers 429 when it is full.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch


@dataclass
class SequenceCache:
    keys: torch.Tensor  # [layers, kv_heads, capacity, head_dim]
    values: torch.Tensor

    @classmethod
    def empty(cls, layers: int, kv_heads: int, capacity: int, head_dim: int, dtype, device) -> SequenceCache:
        shape = (layers, kv_heads, capacity, head_dim)
        return cls(
            torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device)
        )

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def write(
        self, layer: int, pos: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the K/V of tokens at positions pos.. (k, v: [tokens, kv_heads, head_dim]) and return this
        layer's keys and values up to the last of them ([kv_heads, pos + tokens, head_dim])."""
        end = pos + k.shape[0]
        self.keys[layer, :, pos:end] = k.transpose(0, 1)
        self.values[layer, :, pos:end] = v.transpose(0, 1)
        return self.keys[layer, :, :end], self.values[layer, :, :end]


class TokenBudget:
    """How many cache tokens are promised to running sequences, out of `total`."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, tokens: int) -> bool:
        with self._lock:
            if self.used + tokens > self.total:
                return False
            self.used += tokens
            return True

    def release(self, tokens: int) -> None:
        with self._lock:
            self.used -= tokens
