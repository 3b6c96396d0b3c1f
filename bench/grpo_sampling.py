"""GRPO's sampling on the serving engine's batched decoder vs transformers' generate, the same shape as
examples/grpo.yaml's micro-batch: 2 prompts of 150 tokens, 4 answers each, 64 new tokens (fixed length), SmolLM2.

    python bench/grpo_sampling.py 1      # under bf16 autocast, as training samples
    python bench/grpo_sampling.py 0      # fp32
Each prints two timings per engine (the first includes warm-up). Figures in bench/README.md.
"""

import sys
import time

import torch

from tuneforge.models.load import load_model
from tuneforge.serve.engine.decoder import Decoder, Segment

torch.set_num_threads(2)
AC = sys.argv[1] == "1"
lm = load_model("smollm2-135m", dtype="float32", device="cpu")
m = lm.model.eval()
P, G, NEW, L = 2, 4, 64, 150
ids = torch.randint(100, 2000, (P, L))


def hf():
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=AC):
        torch.manual_seed(0)
        m.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            num_return_sequences=G,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            pad_token_id=0,
        )


dec = Decoder(m)


def ours():
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=AC):
        B = P * G
        caches = [dec.new_cache(L + NEW) for _ in range(B)]
        toks = ids.repeat_interleave(G, 0).reshape(-1)
        segs = [Segment(i * L, (i + 1) * L, 0, caches[i], None) for i in range(B)]
        logits = dec.forward(
            toks, torch.arange(L).repeat(B), segs, torch.tensor([(i + 1) * L - 1 for i in range(B)])
        )
        g = torch.Generator().manual_seed(0)
        for s in range(NEW):
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=g)[:, 0]
            segs = [Segment(i, i + 1, L + s, caches[i], None) for i in range(B)]
            logits = dec.forward(nxt, torch.full((B,), L + s), segs, torch.arange(B))


for name, f in [("hf", hf), ("ours", ours), ("hf", hf), ("ours", ours)]:
    t0 = time.time()
    f()
    print(name, f"{time.time() - t0:.2f} s", flush=True)
