"""tuneforge: fine-tune open LLMs on your own data and serve them on your own machines."""

import os

__version__ = "0.1.0"

# oneDNN (PyTorch's CPU bf16 matmuls) caches a compiled primitive per matmul shape, 1024 by default. Training sees a
# new shape for nearly every sequence length, and the cache grew a SmolLM2 LoRA run's resident memory by 0.3 GB;
# 128 keeps the speed (bench/README.md). Read once, when oneDNN first runs: set it in the environment to override.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")
