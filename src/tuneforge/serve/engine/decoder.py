"""A forward pass over many sequences at once, for the batched engine: Llama-family decoders (llama, mistral,
qwen2), reading the weights of the loaded transformers model in place (no copy).

Why not the transformers forward: continuous batching needs every row at its own position with its own KV cache,
prefill chunks and single decode tokens in one pass, and a different LoRA adapter per row. The tokens of all
sequences of a step are laid end to end (`[N, hidden]`), so every linear layer is one matmul over all of them;
only attention and the low-rank part of LoRA go per segment:

- attention: each sequence attends to its own cache (`kv.py`), so a row's attention is the same computation
  whatever else is in the batch;
- LoRA: the base matmul is shared by all rows; each adapter's `B @ A` is applied to its own rows' slice (rows are
  ordered by adapter, so each slice is contiguous). On a CPU this reads each adapter's matrices once per step,
  where gathering them per row (Punica's BGMV, made for GPUs) would read them once per row.

The rotary embedding and the norms are the model's own modules, so rope scaling variants come for free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.serve.engine.kv import SequenceCache
from tuneforge.serve.engine.lora import LoraWeights

ARCHITECTURES = ("llama", "mistral", "qwen2")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a PeftModel wrapper, if any."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def unsupported(model: nn.Module) -> str | None:
    """Why this model cannot use the batched decoder (None: it can)."""
    if getattr(model, "peft_config", None):
        return "it carries PEFT adapters of its own (served as they are, by transformers)"
    cfg = unwrap(model).config
    kind = getattr(cfg, "model_type", "?")
    if kind not in ARCHITECTURES:
        return f"the {kind} architecture has no batched decoder yet (it has {', '.join(ARCHITECTURES)})"
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and window < cfg.max_position_embeddings:
        return "sliding-window attention is not in the batched decoder"
    return None


def _weight(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    layer = getattr(linear, "base_layer", linear)  # a PEFT-wrapped layer keeps the base weights there
    return layer.weight, layer.bias


@dataclass
class Segment:
    """A run of one sequence's tokens in the step: flat positions [start, end), cache positions from `pos`."""

    start: int
    end: int
    pos: int
    cache: SequenceCache
    lora: LoraWeights | None


class _Layer:
    def __init__(self, layer: nn.Module):
        attn, mlp = layer.self_attn, layer.mlp
        self.ln1, self.ln2 = layer.input_layernorm, layer.post_attention_layernorm
        self.w = {n: _weight(getattr(attn, n)) for n in PROJECTIONS[:4]}
        self.w |= {n: _weight(getattr(mlp, n)) for n in PROJECTIONS[4:]}
        self.scaling = attn.scaling
        self.act = mlp.act_fn


class Decoder:
    def __init__(self, model: nn.Module):
        reason = unsupported(model)
        if reason:
            raise ValueError(reason)
        lm = unwrap(model)
        cfg, inner = lm.config, lm.model
        self.config = cfg
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.embed = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb
        self.norm = inner.norm
        self.lm_head = lm.lm_head.weight
        self.layers = [_Layer(layer) for layer in inner.layers]
        self.device, self.dtype = self.embed.device, self.embed.dtype

    def cache_bytes_per_token(self) -> int:
        return 2 * self.n_layers * self.n_kv * self.head_dim * self.dtype.itemsize

    def new_cache(self, capacity: int) -> SequenceCache:
        return SequenceCache.empty(self.n_layers, self.n_kv, capacity, self.head_dim, self.dtype, self.device)

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, segments: list[Segment], last: torch.Tensor
    ):
        """Run the step's tokens through the model, write their K/V into each segment's cache, and return the
        logits (float32) at the flat positions `last` (the tokens whose next token is wanted)."""
        n = tokens.shape[0]
        x = F.embedding(tokens, self.embed)
        cos, sin = self.rotary(x[None], positions[None])
        cos, sin = cos[0, :, None, :].to(x.dtype), sin[0, :, None, :].to(x.dtype)
        groups = _lora_groups(segments)
        masks = {s.start: _offset_causal_mask(s, x.device) for s in segments if s.end - s.start > 1 and s.pos}
        for li, layer in enumerate(self.layers):
            h = layer.ln1(x)
            q = _linear(h, layer.w["q_proj"], groups, li, "q_proj").view(n, self.n_heads, self.head_dim)
            k = _linear(h, layer.w["k_proj"], groups, li, "k_proj").view(n, self.n_kv, self.head_dim)
            v = _linear(h, layer.w["v_proj"], groups, li, "v_proj").view(n, self.n_kv, self.head_dim)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            out = torch.empty_like(q)
            for s in segments:
                t = s.end - s.start
                keys, values = s.cache.write(li, s.pos, k[s.start : s.end], v[s.start : s.end])
                out[s.start : s.end] = F.scaled_dot_product_attention(
                    q[s.start : s.end].transpose(0, 1)[None],
                    keys[None],
                    values[None],
                    attn_mask=masks.get(s.start),
                    is_causal=t > 1 and not s.pos,
                    scale=layer.scaling,
                    enable_gqa=True,
                )[0].transpose(0, 1)
            x = x + _linear(out.view(n, -1), layer.w["o_proj"], groups, li, "o_proj")
            h = layer.ln2(x)
            gate = _linear(h, layer.w["gate_proj"], groups, li, "gate_proj")
            up = _linear(h, layer.w["up_proj"], groups, li, "up_proj")
            x = x + _linear(layer.act(gate) * up, layer.w["down_proj"], groups, li, "down_proj")
        return _linear(self.norm(x[last]), (self.lm_head, None), [], -1, "lm_head").float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _offset_causal_mask(s: Segment, device: torch.device) -> torch.Tensor:
    """A chunk after `pos` cached tokens: query i sees keys 0 .. pos + i."""
    t = s.end - s.start
    rows = torch.arange(t, device=device)[:, None] + s.pos
    return torch.arange(s.pos + t, device=device)[None, :] <= rows


def _lora_groups(segments: list[Segment]) -> list[tuple[int, int, LoraWeights]]:
    """Contiguous flat ranges that share an adapter (the scheduler orders segments by adapter)."""
    groups: list[tuple[int, int, LoraWeights]] = []
    for s in segments:
        if s.lora is None:
            continue
        if groups and groups[-1][2] is s.lora and groups[-1][1] == s.start:
            groups[-1] = (groups[-1][0], s.end, s.lora)
        else:
            groups.append((s.start, s.end, s.lora))
    return groups


def _linear(x, wb, groups, layer: int, name: str) -> torch.Tensor:
    # W @ x.T rather than x @ W.T: with few rows, MKL's kernels for a tall weight times a thin input run about
    # 1.4-2.5x faster on this machine's CPU (bench/README.md, "Serving").
    weight, bias = wb
    if x.shape[0] == 1 and x.device.type == "cpu":  # and two rows beat one (MKL's gemv is the slower kernel)
        return _linear(torch.cat([x, x]), wb, groups, layer, name)[:1]
    y = torch.mm(weight, x.t()).t().contiguous() if x.device.type == "cpu" else F.linear(x, weight)
    if bias is not None:
        y += bias
    for start, end, lora in groups:
        pair = lora.pairs.get((layer, name))
        if pair is not None:
            a, b = pair  # b carries the adapter's scale (alpha / r)
            y[start:end] += F.linear(F.linear(x[start:end], a), b)
    return y
