"""The decode step's matmuls on this machine: one linear layer of each SmolLM2-135M shape (q/o 576x576, k/v
192x576, gate/up 1536x576, down 576x1536) for 1, 2 and 16 rows, in the layouts and weight types a decoder could use:
float32 `x @ W.T`, float32 `W @ x.T` (what serve/engine/decoder.py does), bfloat16, and weight-only int8
(`torch._weight_int8pack_mm`). Random weights; microseconds per set of four, 200 repetitions after 10 warm-ups.
Figures in bench/README.md (serving throughput, single stream).

    python bench/decode_matmuls.py
"""

from __future__ import annotations

import time

import torch

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]


def timed(fn, *args, reps: int = 200) -> float:
    for _ in range(10):
        fn(*args)
    t = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    return (time.perf_counter() - t) / reps * 1e6


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for rows in (1, 2, 16):
        total = {"f32 x@W.T": 0.0, "f32 W@x.T": 0.0, "bf16 x@W.T": 0.0, "int8 weight-only": 0.0}
        for out_f, in_f in SHAPES:
            w, x = torch.randn(out_f, in_f), torch.randn(rows, in_f)
            wb, xb = w.bfloat16(), x.bfloat16()
            scale = w.abs().amax(1) / 127
            wq = (w / scale[:, None]).round().clamp(-128, 127).to(torch.int8)
            total["f32 x@W.T"] += timed(lambda x, w: x @ w.T, x, w)
            total["f32 W@x.T"] += timed(lambda x, w: (w @ x.T).T, x, w)
            total["bf16 x@W.T"] += timed(lambda x, w: x @ w.T, xb, wb)
            total["int8 weight-only"] += timed(torch._weight_int8pack_mm, x, wq, scale)
        print(f"{rows:2d} rows: " + ", ".join(f"{k} {v:.0f} us" for k, v in total.items()))


if __name__ == "__main__":
    main()
