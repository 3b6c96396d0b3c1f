"""Sample packing: several tokenised examples share one row of `max_length` tokens, with no padding between them.

Each example keeps its own position ids (restarting at 0). Given position ids and no 2-D attention mask,
transformers builds a block-diagonal causal mask from them, so no example attends to another — packing
without cross-contamination. The first token of every example has loss weight 0 already (nothing predicts
it), so the boundary between two examples never carries loss.

Rows are filled best-fit-decreasing (like TRL's "bfd"): longest examples first, each into the fullest row that
still has room. The result depends only on the lengths, so a resumed run packs exactly as before.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from tuneforge.data.tokenize import Tokenized


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of the sequences in each row (best-fit decreasing). Sequences longer than capacity get a row alone."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), kept sorted
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
            rows[r].append(i)
            if room - n > 0:
                bisect.insort(free, (room - n, r))
        else:
            rows.append([i])
            if capacity - n > 0:
                bisect.insort(free, (capacity - n, len(rows) - 1))
    return rows


def pack(seqs: Sequence[Tokenized], capacity: int) -> list[Tokenized]:
    """Concatenate sequences into rows of at most `capacity` tokens, with per-example position ids."""
    out = []
    for row in pack_bins([len(s) for s in seqs], capacity):
        ids: list[int] = []
        weights: list[float] = []
        pos: list[int] = []
        for i in row:
            s = seqs[i]
            ids += s.input_ids
            weights += s.weights
            pos += list(range(len(s)))
        out.append(Tokenized(ids, weights, seqs[row[0]].source, index=row[0], position_ids=pos))
    return out
