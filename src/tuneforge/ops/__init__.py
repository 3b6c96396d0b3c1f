"""Kernels that training and evaluation share: fused RMSNorm / SwiGLU / attention / LoRA for the eager step,
the chunked LM-head cross-entropy, and the weighted causal-LM loss built on it."""
