"""K-quants (q4_k_m, q5_k_m, q6_k ...) through llama.cpp's own quantizer, the one llama-cpp-python carries.

The K-quant block formats and their mixes (which tensors get more bits in a `_m` file) live in llama.cpp; writing
them again in Python would be a second, untested copy. The f16 GGUF written by export/gguf.py is the input.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tuneforge.errors import ExportError
from tuneforge.export.gguf import PYTHON_TYPES
from tuneforge.export.verify import LLAMA_CPP_INSTALL

# name → llama_ftype (llama.h)
K_QUANTS = {
    "q2_k": 10,
    "q3_k_m": 12,
    "q4_k_s": 14,
    "q4_k_m": 15,
    "q5_k_s": 16,
    "q5_k_m": 17,
    "q6_k": 18,
    "q4_0": 2,
    "q5_0": 8,
}
ALL_TYPES = (*PYTHON_TYPES, *K_QUANTS)


def check_type(qtype: str) -> str:
    q = qtype.lower()
    if q not in ALL_TYPES:
        raise ExportError(f"unknown quantization type {qtype!r}", f"use one of {', '.join(ALL_TYPES)}")
    if q in K_QUANTS and importlib.util.find_spec("llama_cpp") is None:
        raise ExportError(
            f"{q} is made by llama.cpp's quantizer, which is not installed",
            f"install it: {LLAMA_CPP_INSTALL}",
        )
    return q


def quantize(src: Path, dst: Path, qtype: str, threads: int = 0) -> dict[str, int]:
    """Quantize the GGUF `src` (f16 or f32) into `dst` with llama.cpp; returns the count of tensors per type.

    llama.cpp prints a line per tensor; it is silenced here and summed up instead. A K-quant needs rows that split
    into 256-value super-blocks: where they do not (SmolLM2's 576-wide rows), llama.cpp falls back to q5_0 / q8_0
    for that tensor, which the counts show."""
    import ctypes

    import llama_cpp
    from gguf import GGUFReader
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = K_QUANTS[qtype]
    params.nthread = threads
    with suppress_stdout_stderr(disable=False):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not Path(dst).is_file():
        raise ExportError(f"llama.cpp's quantizer failed on {src} (code {rc})", "try --quant q8_0 or f16")
    counts: dict[str, int] = {}
    for t in GGUFReader(str(dst)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts
