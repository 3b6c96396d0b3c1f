"""Finished runs read back: a run folder's config (with its method's own options), its saved splits, and its model
— base plus the trained adapter, the full weights, or a classification head — for evaluation, chat and serving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tuneforge.config import RunConfig
from tuneforge.data.schema import Example
from tuneforge.errors import DataError, ModelError
from tuneforge.methods import registry
from tuneforge.models import templates
from tuneforge.models.classifier import LABELS_FILE, load_classifier
from tuneforge.models.load import (
    LoadedModel,
    attention_for,
    base_path_for,
    causal_lm_from_pretrained,
    load_model,
    load_tokenizer,
    pick_device,
    quiet_transformers,
    resolve_dtype,
)
from tuneforge.models.registry import ModelSource, resolve
from tuneforge.progress import Steps
from tuneforge.recipes.build import load_config
from tuneforge.recipes.splits import read_splits
from tuneforge.rundir import RunDir


def run_config(run_dir: str | Path) -> RunConfig:
    return load_config(RunDir(run_dir).config)


def saved_splits(run_dir: str | Path) -> tuple[list[Example], list[Example], list[Example], RunConfig]:
    """The (train, validation, test) splits a run saved, and its config."""
    splits = read_splits(RunDir(run_dir))
    return splits["train"], splits["validation"], splits["test"], run_config(run_dir)


def is_classifier_run(name: str | Path) -> bool:
    run = RunDir(name)
    return run.config.is_file() and registry.get(run_config(run.root).method.name).recipe == "classify"


def load_any(name: str, **options: Any) -> LoadedModel:
    """A base model or a trained run (base + adapter, or full weights) with its tokenizer, ready for inference.
    Options as models.load.load_model takes them."""
    src = resolve(name)
    if src.kind != "run":
        return load_model(name, **options)
    dev = pick_device(options.get("device"))
    attn = attention_for(options.get("attn_implementation", "auto"), dev, training=False)
    return load_run(src, dev, resolve_dtype(options.get("dtype", "auto"), dev), attn, options.get("steps"))


def load_run(
    src: ModelSource, dev: torch.device, tdtype: torch.dtype, attn: str, steps: Steps | None = None
) -> LoadedModel:
    quiet_transformers()
    run = RunDir(src.run_dir)
    cfg = run_config(run.root)
    spec = registry.get(cfg.method.name)
    if spec.recipe == "classify":
        raise ModelError(
            f"{run.root} is a classifier run: it answers with labels, not text",
            f"score it with `tuneforge eval {run.root}`",
        )
    artifact = run.artifact(spec.artifact)
    base_src = resolve(cfg.model.name)
    # The run's own tokenizer folder carries the chat template it was trained with.
    tok, _ = load_tokenizer(str(artifact), None)
    if spec.artifact == "model":
        model = causal_lm_from_pretrained(str(artifact), base_src, tdtype, attn)
        base_path = str(artifact)
    else:
        base_path = base_path_for(base_src, steps, cfg.model.revision)
        base = causal_lm_from_pretrained(base_path, base_src, tdtype, attn)
        model = spec.load(base, artifact)
    model.to(dev).eval()
    return LoadedModel(
        model=model,
        tokenizer=tok,
        name=base_src.display,
        source=src,
        base_path=base_path,
        template_origin="run",
        stop_token_ids=templates.stop_token_ids(tok),
        run_dir=run.root,
        method=cfg.method.name,
    )


def load_run_classifier(run_dir: str | Path, cfg: RunConfig | None = None):
    """(model, tokenizer, labels) of a trained classifier run."""
    from transformers import AutoTokenizer

    run = RunDir(run_dir)
    cfg = cfg or run_config(run.root)
    spec = registry.get(cfg.method.name)
    artifact = run.artifact(spec.artifact)
    labels = json.loads((artifact / LABELS_FILE).read_text())
    base = None
    if (artifact / "adapter_config.json").is_file():  # adapters (and the head) over a fresh base
        base, _ = load_classifier(base_path_for(resolve(cfg.model.name), None, cfg.model.revision), labels)
    return spec.load(base, artifact), AutoTokenizer.from_pretrained(str(artifact)), labels


def evaluate_classifier_run(
    run_dir: str | Path, *, data: str | None = None, out_dir: str | None = None, show: bool = True
) -> dict[str, Any]:
    """`tuneforge eval RUN` for a classifier: its test split, or every record of `data`."""
    from tuneforge.data.formats import load_file
    from tuneforge.data.tokenize import encode_labeled
    from tuneforge.eval.classify import classification_report, predict_rows
    from tuneforge.eval.report import print_classification_report, write_classification_report
    from tuneforge.progress import console

    train, _, test, cfg = saved_splits(run_dir)
    model, tok, labels = load_run_classifier(run_dir, cfg)
    examples = load_file(data, "classification", cfg.data.columns, None).examples if data else test
    if not examples:
        raise DataError("nothing to evaluate on", "pass --data FILE with text + label records")
    rows = encode_labeled(examples, tok, labels, cfg.data.max_length)
    report = classification_report(
        lambda r: predict_rows(model, tok, r, cfg.train.batch_size * 2), labels, rows, train
    )
    report["base_model"] = cfg.model.name
    if out_dir:
        write_classification_report(report, Path(out_dir))
    if show:
        print_classification_report(report, console)
    return report
