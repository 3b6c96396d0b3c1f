"""Export a tuned model to where people run models, and check that each export answers like the original.

One module per format: `merged` (a Hugging Face folder: transformers, vLLM, TGI), `gguf` (one file for llama.cpp),
`gguf_lora` (the adapter alone, for llama.cpp's --lora), `ollama` (the GGUF plus a Modelfile); `quantize` runs
llama.cpp's own quantizer for the K-quants; `verify` loads an export the way its users would and compares its
greedy answers with the tuned model's. The orchestration (which run, which prompts, the task score) lives in
recipes/export.py; this floor holds no knowledge of runs.
"""

FORMATS = ("merged", "gguf", "gguf-lora", "ollama")
