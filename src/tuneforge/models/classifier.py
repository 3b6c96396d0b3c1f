"""Loading a model with a sequence-classification head (AutoModelForSequenceClassification) for a set of labels."""

from __future__ import annotations

import torch

from tuneforge.errors import ModelError
from tuneforge.models.load import quiet_transformers

HEAD_NAMES = ("classifier", "score")  # BERT-style and Llama-style head module names
LABELS_FILE = "labels.json"  # the label of each head output, in order, saved beside a trained head's weights


def is_head(name: str) -> bool:
    """Whether a parameter name belongs to the classification head (bare, or under a peft wrapper)."""
    return name.split(".")[0] in HEAD_NAMES or ".score." in name


def load_classifier(path: str, labels: list[str], dtype: torch.dtype = torch.float32):
    """(model, tokenizer) with a fresh head of len(labels) outputs on the model in `path`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:  # decoders: the head reads the last non-pad token, so pad must be set
        tok.pad_token = tok.eos_token
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)},
        dtype=dtype,
        output_loading_info=True,
    )
    # Only the fresh head may start random: a backbone weight missing from the checkpoint (a tied embedding saved
    # under the LM head's name, say) would otherwise train from noise without a word.
    missing = [k for k in info["missing_keys"] if not is_head(k)]
    if missing:
        raise ModelError(
            f"{path} lacks {len(missing)} backbone weight(s) the classifier needs ({', '.join(missing[:3])})",
            "re-save the model with transformers' save_pretrained, or delete tuneforge's model cache "
            "(~/.cache/tuneforge/models) so a bundled model is converted again",
        )
    model.config.pad_token_id = tok.pad_token_id
    return model, tok
