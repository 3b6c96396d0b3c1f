"""Token sequences → batches: the epoch's order, and padding into tensors.

The order of an epoch is a pure function of (seed, epoch), so a resumed run sees exactly the batches an
uninterrupted one would have seen. With `group_by_length`, examples are shuffled, cut into windows of
many batches, sorted by length inside each window and batched, and the batches shuffled again: most padding
disappears while every example is still seen once per epoch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from tuneforge.data.tokenize import Labeled, Tokenized

WINDOW_BATCHES = 32


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True
) -> list[list[int]]:
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if not group_by_length:
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    window = batch_size * WINDOW_BATCHES
    batches: list[list[int]] = []
    for w in range(0, len(idx), window):
        chunk = sorted(idx[w : w + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def split_by_tokens(batch: Sequence[int], lengths: Sequence[int], budget: int | None) -> list[list[int]]:
    """Cut one batch into micro-batches of at most `budget` padded tokens (rows x longest row), longest first.

    The optimizer step still sees the whole batch (the loss is normalised over all its micro-batches), so this
    changes peak activation memory, not the update.
    """
    if not budget:
        return [list(batch)]
    out: list[list[int]] = []
    cur: list[int] = []
    for i in sorted(batch, key=lambda i: -lengths[i]):
        longest = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) + 1) * longest > budget:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def collate(items: Sequence[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence. `weights` is 0 on padding, so padding never carries loss.

    Packed rows (with position ids) get `position_ids` instead of an attention mask: the model derives the
    block-diagonal mask from them, and the padding tail counts as one more example that nothing attends to.
    """
    n = max(len(t) for t in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    weights = torch.zeros((len(items), n), dtype=torch.float32)
    packed = any(t.position_ids is not None for t in items)
    pos = torch.zeros((len(items), n), dtype=torch.long)
    for r, t in enumerate(items):
        k = len(t)
        ids[r, :k] = torch.tensor(t.input_ids, dtype=torch.long)
        mask[r, :k] = 1
        weights[r, :k] = torch.tensor(t.weights, dtype=torch.float32)
        if packed:
            pos[r, :k] = torch.tensor(
                t.position_ids if t.position_ids is not None else range(k), dtype=torch.long
            )
            pos[r, k:] = torch.arange(n - k)
    batch = {"input_ids": ids, "attention_mask": mask, "weights": weights}
    if packed:
        batch["position_ids"] = pos
    return batch


def collate_labeled(items: Sequence[Labeled], tok: Any) -> dict[str, torch.Tensor]:
    """Texts for a classification head, padded by its tokenizer (its padding side and attention mask), with their
    label indices."""
    enc = tok.pad({"input_ids": [t.input_ids for t in items]}, return_tensors="pt")
    return {**enc, "labels": torch.tensor([t.label for t in items])}
