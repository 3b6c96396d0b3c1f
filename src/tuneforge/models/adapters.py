"""Views of a PEFT model that evaluation, training objectives and the service share: the base model's answers
from the same weights with the adapters off, and adapters folded into the weights while generating."""

from __future__ import annotations

import contextlib
from typing import Any


def adapters_off(model: Any):
    """Context in which a PEFT model answers as its base model — the same weights, no second copy."""
    if hasattr(model, "disable_adapter") and getattr(model, "peft_config", None):
        return model.disable_adapter()
    return contextlib.nullcontext()


@contextlib.contextmanager
def adapters_merged(model: Any):
    """Fold LoRA-style adapters into the base weights while generating (about 1.6x faster decoding on CPU),
    then unfold them. Methods that cannot merge (prompt learning) run unmerged."""
    merged = False
    if getattr(model, "peft_config", None) and hasattr(model, "merge_adapter"):
        try:
            model.merge_adapter()
            merged = True
        except (ValueError, NotImplementedError, AttributeError):
            merged = False
    try:
        yield model
    finally:
        if merged:
            model.unmerge_adapter()


BASE_FILE = "tuneforge-base.json"


def record_base(folder: Any, base_name: str, hub_id: str | None) -> None:
    """Make a saved PEFT adapter load on another machine: PEFT records the local folder the base was read from (a
    path in tuneforge's cache) as `base_model_name_or_path`; the base's hub id goes there instead where it is known,
    and the name tuneforge loads the base by is kept beside it in tuneforge-base.json."""
    import json
    from pathlib import Path

    cfg_path = Path(folder) / "adapter_config.json"
    if not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text())
    (Path(folder) / BASE_FILE).write_text(
        json.dumps({"name": base_name, "hub_id": hub_id, "local_path": cfg.get("base_model_name_or_path")})
        + "\n"
    )
    if hub_id:
        cfg["base_model_name_or_path"] = hub_id
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
