"""`gguf`: one .gguf file for llama.cpp (and LM Studio, Ollama, llama-cpp-python), written in pure Python.

Tensor names and metadata follow llama.cpp's own converter (convert_hf_to_gguf.py) for Llama-family models: the
gguf package's tensor-name map, Q and K projections permuted to llama.cpp's rotary layout, norms kept in float32,
the byte-level BPE vocabulary with its merges and token types, the BOS / EOS / end-of-turn / pad ids, and the chat
template the run was trained with. f32, f16, bf16 and q8_0 are written here; the K-quants come from llama.cpp's
quantizer run on the f16 file (export/quantize.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.errors import ExportError
from tuneforge.models import templates

# model_type of transformers' config → llama.cpp architecture whose graph runs it unchanged.
ARCHITECTURES = {"llama": "llama", "mistral": "llama"}
# Written here; the K-quants are in export/quantize.py.
PYTHON_TYPES = ("f32", "f16", "bf16", "q8_0")


def check_architecture(config: Any) -> str:
    model_type = getattr(config, "model_type", "?")
    if model_type not in ARCHITECTURES:
        raise ExportError(
            f"the GGUF writer does not know the {model_type!r} architecture yet (it writes "
            f"{', '.join(sorted(ARCHITECTURES))})",
            "export --to merged and convert that folder with llama.cpp's convert_hf_to_gguf.py",
        )
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise ExportError(
            f"rope scaling {rope['rope_type']!r} is not written by tuneforge's GGUF writer yet",
            "export --to merged and convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    return ARCHITECTURES[model_type]


def rope_parameters(config: Any) -> dict:
    """transformers 5 keeps rope settings in `rope_parameters`; 4.x in `rope_theta` + `rope_scaling`."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


# ---------------------------------------------------------------------------------------------- tensors
def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face stores Q and K with the two rotary halves of each head apart ("rotate_half"); llama.cpp
    expects them interleaved. The same reshuffle llama.cpp's converter applies to Llama checkpoints."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(state: dict[str, torch.Tensor], config: Any) -> dict[str, np.ndarray]:
    """The model's float32 tensors under llama.cpp's names, rotary layout applied."""
    import gguf

    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    out: dict[str, np.ndarray] = {}
    for hf_name, t in state.items():
        if hf_name.endswith("rotary_emb.inv_freq"):  # recomputed by llama.cpp from the rope metadata
            continue
        if hf_name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue  # llama.cpp reuses token_embd when the file has no output.weight
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(
                f"no GGUF name for the tensor {hf_name!r}",
                "export --to merged and convert it with llama.cpp's convert_hf_to_gguf.py",
            )
        data = t.detach().to(torch.float32).cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = permute_rotary(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_rotary(data, n_kv)
        out[name] = data
    return out


def encode(data: np.ndarray, qtype: str) -> tuple[np.ndarray, Any]:
    """(bytes to write, GGML type) of one tensor. Norms and other 1-D tensors stay float32, as llama.cpp's
    converter keeps them; a row that does not split into 32-value blocks falls back from q8_0 to f16."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    if data.ndim == 1 or qtype == "f32":
        return data.astype(np.float32), Q.F32
    if qtype == "q8_0" and data.shape[-1] % 32 == 0:
        return gguf.quants.quantize(data, Q.Q8_0), Q.Q8_0
    if qtype == "bf16":
        return gguf.quants.quantize(data, Q.BF16), Q.BF16
    return data.astype(np.float16), Q.F16


# ---------------------------------------------------------------------------------------------- tokenizer
# The pre-tokenizer decides how text is cut before BPE; llama.cpp knows each by a name. Keyed by the shape of the
# tokenizer.json "pre_tokenizer" entry, so the GGUF tokenizes exactly as the tokenizer the run was trained with
# (the verification compares the token ids of every prompt).
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def pre_tokenizer_name(pre: dict | None) -> str:
    if pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if pre and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        kinds = [p.get("type") for p in parts]
        split = next((p for p in parts if p.get("type") == "Split"), None)
        if split and split.get("pattern", {}).get("Regex") == LLAMA3_SPLIT:
            return "llama-bpe"
        # SmolLM's own tokenizer: digits one by one, then GPT-2's split
        if (
            kinds == ["Digits", "ByteLevel"]
            and parts[0].get("individual_digits")
            and parts[1].get("use_regex", True)
        ):
            return "smollm"
    raise ExportError(
        f"the tokenizer's pre-tokenizer ({json.dumps(pre)[:120]}) is not one tuneforge's GGUF writer knows",
        "export --to merged and convert it with llama.cpp's convert_hf_to_gguf.py",
    )


def vocabulary(tok: Any, vocab_size: int) -> dict:
    """Tokens, token types, merges and the pre-tokenizer name of a byte-level BPE tokenizer (GPT-2 style: SmolLM2,
    Llama 3, Qwen ...), as llama.cpp's converter writes them. Ids past the tokenizer's vocabulary (a model whose
    embedding was padded) become unused placeholder tokens."""
    from gguf import TokenType

    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ExportError(
            "tuneforge's GGUF writer handles byte-level BPE tokenizers; this one is "
            f"{model.get('type')}{' with byte fallback (SentencePiece style)' if model.get('byte_fallback') else ''}",
            "export --to merged and convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    by_id = {i: t for t, i in model["vocab"].items()}
    kinds = {i: TokenType.NORMAL for i in by_id}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        kinds[added["id"]] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
    size = max(vocab_size, max(by_id) + 1)
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    types = [int(kinds.get(i, TokenType.UNUSED)) for i in range(size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "pre": pre_tokenizer_name(spec.get("pre_tokenizer")),
    }


def adds_bos(tok: Any) -> bool:
    """Whether the tokenizer puts BOS in front of plain text; llama.cpp repeats that from the GGUF's flag."""
    ids = tok("a")["input_ids"]
    return tok.bos_token_id is not None and bool(ids) and ids[0] == tok.bos_token_id


# ------------------------------------------------------------------------------------------------- writing
def write_vocabulary(writer: Any, tok: Any, vocab_size: int) -> None:
    v = vocabulary(tok, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(v["pre"])
    writer.add_token_list(v["tokens"])
    writer.add_token_types(v["types"])
    writer.add_token_merges(v["merges"])
    if tok.bos_token_id is not None:
        writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    eot = templates.end_of_turn_id(tok)
    if eot is not None and eot != tok.eos_token_id:  # the end-of-turn token stops generation too
        writer.add_eot_token_id(eot)
    if tok.unk_token_id is not None:
        writer.add_unk_token_id(tok.unk_token_id)
    if tok.pad_token_id is not None:
        writer.add_pad_token_id(tok.pad_token_id)
    writer.add_add_bos_token(adds_bos(tok))
    writer.add_add_space_prefix(False)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def write(
    state: dict[str, torch.Tensor], config: Any, tok: Any, path: Path, qtype: str = "f16", name: str = "model"
) -> dict:
    """Write `state` (a Llama-family state dict with each shared tensor once) as one GGUF file at `path`."""
    import gguf

    if qtype not in PYTHON_TYPES:
        raise ExportError(f"{qtype!r} is not written in Python", f"use one of {', '.join(PYTHON_TYPES)}")
    arch = check_architecture(config)
    tensors = gguf_tensors(state, config)
    rope = rope_parameters(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[qtype]))
    if qtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_vocabulary(writer, tok, config.vocab_size)

    counts: dict[str, int] = {}
    for tname, data in tensors.items():
        raw, ggml_type = encode(data, qtype)
        writer.add_tensor(tname, raw, raw_dtype=ggml_type)
        counts[ggml_type.name] = counts.get(ggml_type.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"architecture": arch, "quant": qtype, "tensors": counts}
