"""Layer-wise learning-rate decay (discriminative learning rates), an option of `full`, `freeze` and `unfreeze`.

The top transformer layer trains at the run's learning rate and each layer below at `layer_lr_decay` times the
one above; the embeddings sit below layer 0. Parameters outside the layer stack (final norm, an untied LM head,
a classification head) train at the full rate. Lower layers hold general features that a small dataset should
move least (ULMFiT; ELECTRA/BERT fine-tuning recipes use 0.8-0.95).
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from tuneforge.config import MethodConfig
from tuneforge.models.load import decoder_layers


class LayerDecayOptions(MethodConfig):
    layer_lr_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Layer-wise learning-rate decay: layer i from the top trains at lr x decay^i, the embeddings "
        "below the lowest layer (1 = one learning rate for all).",
    )


def layer_index(model: nn.Module) -> tuple[dict[int, int], int]:
    """(id(parameter) -> depth from the top: 0 for the top layer, L for the embeddings; number of layers)."""
    layers = decoder_layers(model)
    n = len(layers)
    depth: dict[int, int] = {}
    for i, layer in enumerate(layers):
        for p in layer.parameters():
            depth[id(p)] = n - 1 - i
    emb = model.get_input_embeddings()
    if emb is not None:
        for p in emb.parameters():
            depth[id(p)] = n
    return depth, n


def param_groups(
    model: nn.Module, cfg: LayerDecayOptions, lr: float, params: list | None = None
) -> list[dict]:
    """Optimizer groups, highest learning rate first. `params`: the parameters to optimise (default: trainable)."""
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    decay = getattr(cfg, "layer_lr_decay", 1.0)
    if decay == 1.0:
        return [{"params": params, "lr": lr}]
    depth, _ = layer_index(model)
    by_depth: dict[int, list] = {}
    for p in params:
        by_depth.setdefault(depth.get(id(p), 0), []).append(p)
    return [{"params": by_depth[d], "lr": lr * decay**d} for d in sorted(by_depth)]
